"""The reliability suite: shared real files (a dataset, its feature file, a bundle) and the hostile-case count."""

from __future__ import annotations

import h5py
import pytest
from hostile import EXTRACT_ARGS, HOSTILE, MEASURED, make_dataset, run_cli

from featx import Recipe


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """A real dataset, its real feature file (featx extract) and a real bundle trained on it (featx train)."""
    root = tmp_path_factory.mktemp("base")
    data = make_dataset(root / "data")
    features = root / "base.h5"
    code, _, err = run_cli("extract", data, "-o", features, *EXTRACT_ARGS)
    assert code == 0, err
    code, _, err = run_cli("train", features, "-o", root / "models", "-q", "--no-report")
    assert code == 0, err
    with h5py.File(features, "r") as f:
        recipe = Recipe.from_attrs(f.attrs)
    return {"root": root, "data": data, "features": features, "bundle": root / "models" / "base-logreg.skops",
            "recipe": recipe}


def pytest_terminal_summary(terminalreporter):
    if HOSTILE:
        total = sum(HOSTILE.values())
        terminalreporter.write_sep("-", f"reliability: {total} hostile cases ran; each ended in a result or one "
                                        "clean error")
        for kind, count in sorted(HOSTILE.items()):
            terminalreporter.write_line(f"  {count:5d}  {kind}")
    for what, value in MEASURED.items():
        terminalreporter.write_line(f"reliability: {what}: {value}")
