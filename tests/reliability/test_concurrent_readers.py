"""`featx train` on a feature file while `featx extract` appends to it, in another process: every read
sees one finished file (the old rows, or old and new), never a half-written one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from hostile import EXTRACT_ARGS, HOSTILE, MEASURED, run_cli, write_images

import featx
from featx import FeatureStore, load_bundle

REPO = str(Path(featx.__file__).resolve().parents[1])

# A real `featx extract`, slowed down so that a reader meets it mid-way: each batch waits a little, and
# so does each block the final file is assembled from, while the old file is still in place. Two marker
# files tell the test which phase the writer is in.
SLOW_EXTRACT = """
import sys, time
from pathlib import Path
from featx import runner
from featx.cli import main
from featx.store import writer

phase = Path(sys.argv[1])
real_run, real_append = runner._run_backbone, writer._FinalSink.append

def slow_run(*args, **kwargs):
    phase.write_text("extracting")
    time.sleep(0.2)
    return real_run(*args, **kwargs)

def slow_append(self, contents):
    phase.write_text("assembling")
    real_append(self, contents)
    time.sleep(0.5)

runner._run_backbone, writer._FinalSink.append = slow_run, slow_append
sys.exit(main(sys.argv[2:]))
"""


def _snapshot(path, reference: dict) -> int:
    """Read the file as train does; check it is one finished file; return its rows."""
    with FeatureStore(path) as store:
        assert store.complete and len(set(store.paths)) == len(store)
        features = store.features[:]
        for row_path, label, row in zip(store.paths, store.labels, features):
            assert store.label_names[label] == row_path.split("/")[0]
            np.testing.assert_allclose(row, reference[row_path], atol=1e-5)
        return len(store)


def test_train_reads_a_consistent_snapshot_while_extract_appends(tmp_path):
    data = tmp_path / "data"
    write_images(data / "dark", 8, 50, seed=0)
    write_images(data / "light", 8, 200, seed=1)
    out = tmp_path / "growing.h5"
    extract = ["extract", data, "-o", out, "--buffer-size", "4", "--batch-size", "2", *EXTRACT_ARGS]
    assert run_cli(*extract)[0] == 0  # 16 rows, complete
    for folder, brightness in (("dark", 60), ("light", 190)):  # 16 more images: the next run appends them
        for i, image in enumerate(write_images(tmp_path / "more" / folder, 8, brightness, seed=2)):
            image.rename(data / folder / f"new-{i:03d}.png")
    reference_file = tmp_path / "reference.h5"
    assert run_cli("extract", data, "-o", reference_file, *EXTRACT_ARGS)[0] == 0
    with FeatureStore(reference_file) as store:
        reference = dict(zip(store.paths, store.features[:]))

    phase = tmp_path / "phase"
    child = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, str(phase), *map(str, extract)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO))
    reads, trains = [], []
    try:
        deadline = time.monotonic() + 600
        while child.poll() is None and time.monotonic() < deadline:
            during = phase.read_text() if phase.exists() else "starting"
            reads.append((during, _snapshot(out, reference)))
            if during in ("extracting", "assembling") and sum(d == during for d, _ in trains) < 2:
                # A whole `featx train`: it reads the file once, then fits; its bundle records what it read.
                # Two per phase: more would only take the child's CPU on a small machine.
                models = tmp_path / f"models-{len(trains)}"
                code, _, stderr = run_cli("train", out, "-o", models, "-q", "--no-report")
                assert code == 0, stderr
                trains.append((during, load_bundle(models / "growing-logreg.skops").extra["refit_rows"]))
            time.sleep(0.02)
        assert child.wait(timeout=60) == 0, child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
    reads.append(("finished", _snapshot(out, reference)))
    HOSTILE["concurrent readers: featx train while featx extract appends (one scenario)"] += 1
    MEASURED["concurrent readers"] = (f"{len(reads)} reads, (phase, rows) seen: {sorted(set(reads))}; trains while "
                                      f"extract ran, (phase, rows): {trains}")

    assert {rows for _, rows in reads} <= {16, 32} and {rows for _, rows in trains} <= {16, 32}
    assert ("assembling", 16) in reads, f"no read met the new file being assembled: {sorted(set(reads))}"
    assert ("extracting", 16) in trains, f"no featx train ran while extract wrote its shards: {trains}"
    assert reads[-1] == ("finished", 32)
