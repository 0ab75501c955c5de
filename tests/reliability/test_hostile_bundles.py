"""Damaged and malicious model bundles: refused in one line, before any code from them runs.

Entry points: `load_bundle`, `featx evaluate`, `featx predict`, `featx report`. The bundles are the
real one `featx train` wrote, cut short, with bytes changed, or rewritten with skops holding a type
outside featx's trusted list, a newer format, an unknown backbone or contents of the wrong type.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import skops.io
from hostile import clean_call, clean_cli, file_digest, tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marker_types import MarkerOnLoad

from featx import load_bundle
from featx.bundle import trusted_types

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _every_entry_point(kind: str, bundle: Path, base, workdir: Path, *, refused: bool = True) -> list[str]:
    """Hand `bundle` to each entry point: each ends cleanly (refuses when told), nothing is written, the
    bundle is unchanged; returns the error lines."""
    before, files_before = file_digest(bundle), tree(workdir)
    _, error = clean_call(f"{kind}: load_bundle", load_bundle, bundle)
    assert (error is not None) >= refused
    lines = [str(error)] if error else []
    for command, args in (("evaluate", [base["features"]]),
                          ("predict", [base["data"] / "dark", "-o", workdir / "predictions.csv"]),
                          ("report", [base["features"], "-o", workdir / "page"])):
        line = clean_cli(f"{kind}: featx {command}", command, bundle, *args, must_fail=refused)
        lines += [line] if line else []
    assert file_digest(bundle) == before, "an entry point changed the bundle"
    if refused:
        assert tree(workdir) == files_before, "a refused bundle still wrote something"
    return lines


def _rewritten(base, path: Path, **changes) -> Path:
    """The real bundle's content, changed, saved again with skops as featx saves it."""
    content = skops.io.load(base["bundle"], trusted=trusted_types())
    content.update(changes)
    skops.io.dump(content, path)
    return path


def test_the_real_bundle_works_at_every_entry_point(base, tmp_path):
    # The control: the harness below refuses damaged bundles, not every bundle. (It found that
    # `featx report` failed on any bundle trained since fused training recorded a list of files.)
    path = tmp_path / "real.skops"
    path.write_bytes(base["bundle"].read_bytes())
    assert _every_entry_point("bundle: unchanged (control)", path, base, tmp_path, refused=False) == []
    assert (tmp_path / "predictions.csv").exists() and list((tmp_path / "page").glob("*.html"))


@settings(max_examples=25, **SETTINGS)
@given(blob=st.binary(max_size=4096), zip_magic=st.booleans())
def test_random_bytes_as_a_bundle(base, blob, zip_magic):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.skops"
        path.write_bytes((b"PK\x03\x04" if zip_magic else b"") + blob)
        _every_entry_point("bundle: random bytes", path, base, Path(tmp))


@settings(max_examples=25, **SETTINGS)
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_bundle_cut_short(base, fraction):
    content = base["bundle"].read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cut.skops"
        path.write_bytes(content[: int(len(content) * fraction)])
        _every_entry_point("bundle: truncated", path, base, Path(tmp))


@settings(max_examples=25, **SETTINGS)
@given(data=st.data())
def test_bundle_with_changed_bytes(base, data):
    # A changed byte may land where zip keeps nothing that matters (a timestamp): then the bundle may
    # load and work. Anywhere else zip's CRCs and skops' schema must refuse it; never a traceback.
    content = bytearray(base["bundle"].read_bytes())
    changes = data.draw(st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(0, 255)), min_size=1,
                                 max_size=8))
    for offset, value in changes:
        content[offset] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "changed.skops"
        path.write_bytes(bytes(content))
        _every_entry_point("bundle: changed bytes", path, base, Path(tmp), refused=False)


@pytest.mark.parametrize("where", ["head", "metrics"])
def test_a_type_outside_the_trusted_list_is_refused_before_it_is_built(base, tmp_path, where):
    marker = tmp_path / "marker"
    evil = MarkerOnLoad(marker)
    changes = {"head": evil} if where == "head" else {"metrics": {"accuracy": 1.0, "note": evil}}
    path = _rewritten(base, tmp_path / "evil.skops", **changes)
    work = tmp_path / "work"
    work.mkdir()
    for line in _every_entry_point(f"bundle: untrusted type in {where}", path, base, work):
        assert "marker_types.MarkerOnLoad" in line and "does not trust" in line
    assert not marker.exists(), "code from the bundle ran"
    # The control: the same file does run its code once the type is trusted, so the refusal above is what
    # kept it from running.
    skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path) + trusted_types())
    assert marker.read_text() == "code from the bundle ran"


@pytest.mark.parametrize("case, changes, words", [
    ("newer format", {"format": "featx-bundle/3"}, "upgrade featx"),
    ("unknown backbone", "backbone", "does not know"),
    ("not a featx bundle", {"format": "someone-else/1"}, "not a featx model bundle"),
    ("label names of the wrong type", {"label_names": 5}, "damaged featx model bundle"),
    ("a head that cannot predict", {"head": "logreg"}, "damaged featx model bundle"),
    ("recipes of the wrong type", {"recipes": 7}, "damaged featx model bundle"),
    ("no head", "no head", "incomplete featx model bundle"),
])
def test_bundle_featx_did_not_write(base, tmp_path, case, changes, words):
    if changes == "backbone":
        recipes = skops.io.load(base["bundle"], trusted=trusted_types())["recipes"]
        changes = {"recipes": [{**recipes[0], "backbone": "resnet9000"}]}
    path = tmp_path / "bundle.skops"
    if changes == "no head":
        content = skops.io.load(base["bundle"], trusted=trusted_types())
        del content["head"]
        skops.io.dump(content, path)
    else:
        _rewritten(base, path, **changes)
    work = tmp_path / "work"
    work.mkdir()
    for line in _every_entry_point(f"bundle: {case}", path, base, work):
        assert words in line and str(path) in line
