"""`featx train` on a feature file while `featx extract` appends to it, in another process: every read
sees one finished file (the old rows, or old and new), never a half-written one."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
from hostile import EXTRACT_ARGS, HOSTILE, MEASURED, run_cli, write_images

import featx
from featx import FeatureStore, load_bundle

REPO = str(Path(featx.__file__).resolve().parents[1])

# A real `featx extract` that stops at each batch, and after each block the final file is assembled from
# (while the old file is still in place), until the test has read the file: it names the phase on one pipe
# and waits for a line on the other. So every phase is met by a reader, on any machine, at any load.
PAUSING_EXTRACT = """
import os, sys
from featx import runner
from featx.cli import main
from featx.store import _sink

to_test, from_test = os.fdopen(int(sys.argv[1]), "w"), os.fdopen(int(sys.argv[2]))
real_run, real_append = runner._run_backbone, _sink.FinalSink.append

def pause(phase):
    to_test.write(phase + "\\n")
    to_test.flush()
    from_test.readline()

def paused_run(*args, **kwargs):
    pause("extracting")
    return real_run(*args, **kwargs)

def paused_append(self, contents):
    real_append(self, contents)
    pause("assembling")

runner._run_backbone, _sink.FinalSink.append = paused_run, paused_append
sys.exit(main(sys.argv[3:]))
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

    phases_out, phases_in = os.pipe()
    go_out, go_in = os.pipe()
    log = tmp_path / "extract.log"
    with open(log, "w") as log_file:
        child = subprocess.Popen([sys.executable, "-c", PAUSING_EXTRACT, str(phases_in), str(go_out),
                                  *map(str, extract)], pass_fds=(phases_in, go_out), stdout=log_file,
                                 stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO))
    os.close(phases_in)
    os.close(go_out)
    reads, trains = [], []
    with os.fdopen(phases_out) as phases, os.fdopen(go_in, "w") as go:
        try:
            while True:
                # The child writes one line, then waits for ours: nothing is ever buffered ahead of select.
                ready, _, _ = select.select([phases], [], [], 600)
                assert ready, f"extract stopped answering:\n{log.read_text()}"
                during = phases.readline().strip()
                if not during:
                    break  # the child closed its end: extract has finished
                reads.append((during, _snapshot(out, reference)))
                if sum(d == during for d, _ in trains) < 2:
                    # A whole `featx train`: it reads the file once, then fits; its bundle records what it read.
                    # Two per phase: more would only add minutes.
                    models = tmp_path / f"models-{len(trains)}"
                    code, _, stderr = run_cli("train", out, "-o", models, "-q", "--no-report")
                    assert code == 0, stderr
                    trains.append((during, load_bundle(models / "growing-logreg.skops").extra["refit_rows"]))
                go.write("\n")
                go.flush()
            assert child.wait(timeout=60) == 0, log.read_text()
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
