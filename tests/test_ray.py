"""Stage 1 on Ray Data: a real local Ray instance (2 CPUs), real images written with OpenCV, real HDF5 files.

One Ray instance serves the whole module: starting Ray costs seconds, and each extraction still
starts its own backbone actor.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'featx[ray]' (the [test] extra has it)")

from killing import sigkill_once_ready  # noqa: E402

from featx import FeatxError  # noqa: E402 - after the skip: nothing here runs without Ray
from featx.extract import extract  # noqa: E402
from featx.store import FeatureStore, HDF5DatasetWriter  # noqa: E402

SIZE = 48  # small inputs keep random-weight backbones fast; the plumbing is the same at 224
OPTIONS = dict(backbone="efficientnet_lite0", weights="none", image_size=SIZE, progress=False,
               log=lambda *a: None)


@pytest.fixture(scope="module")
def ray_address():
    if ray.is_initialized():  # pragma: no cover - a session that already has Ray keeps it
        yield ray.get_runtime_context().gcs_address
        return
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_images(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
        cv2.rectangle(image, (5, 5), (20 + i % 10, 25), (int(rng.integers(256)), 0, 255), -1)
        assert cv2.imwrite(str(folder / f"img {i:03d}.png"), image)


def make_dataset(root: Path, n=6) -> Path:
    for c, name in enumerate(("ants", "bees")):
        write_images(root / name, n, seed=c)
    return root


def assert_same_rows(a, b) -> None:
    """The same file content, matched by (path, augmented copy): row order may differ between engines."""
    with FeatureStore(a) as x, FeatureStore(b) as y:
        assert x.complete and y.complete
        assert len(x) == len(y) and x.label_names == y.label_names and x.recipe == y.recipe
        assert sorted(x.skipped) == sorted(y.skipped)
        aug_x = x.aug if x.aug is not None else np.zeros(len(x), int)
        aug_y = y.aug if y.aug is not None else np.zeros(len(y), int)
        position = {key: i for i, key in enumerate(zip(y.paths, aug_y.tolist()))}
        order = np.array([position[key] for key in zip(x.paths, aug_x.tolist())])
        np.testing.assert_array_equal(x.labels, y.labels[order])
        np.testing.assert_allclose(x.features[:], y.features[:][order], atol=1e-5)
        assert x.attrs["split"] == y.attrs["split"] and x.attrs["dataset_root"] == y.attrs["dataset_root"]


def test_ray_rows_equal_the_local_engines_with_the_same_skipped_file(tmp_path, ray_address):
    data = make_dataset(tmp_path / "data", n=6)
    (data / "bees" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    local = extract(data, tmp_path / "local.h5", batch_size=4, buffer_size=5, **OPTIONS)
    on_ray = extract(data, tmp_path / "ray.h5", batch_size=4, buffer_size=5, engine="ray", **OPTIONS)

    assert on_ray.rows == local.rows == 12 and on_ray.images_processed == 13
    assert on_ray.files[0].skipped == local.files[0].skipped == [
        ("bees/broken.png", "cannot decode image (not an image or corrupt)")]
    assert "on Ray, 1 backbone actor(s)" in on_ray.timing_line()
    assert_same_rows(tmp_path / "local.h5", tmp_path / "ray.h5")
    rerun = extract(data, tmp_path / "ray.h5", engine="ray", **OPTIONS)
    assert rerun.rows_new == 0 and rerun.images_processed == 0


def test_ray_split_folders_and_two_backbones_behave_like_the_local_engine(tmp_path, ray_address):
    for split, n in (("train", 4), ("val", 3)):
        make_dataset(tmp_path / "data" / split, n=n)
    options = dict(OPTIONS, backbone="efficientnet_lite0,efficientnet_lite1", augment=1, tta="flip", batch_size=3)
    local = extract(tmp_path / "data", tmp_path / "local" / "x.h5", **options)
    on_ray = extract(tmp_path / "data", tmp_path / "ray" / "x.h5", engine="ray", **options)

    assert [f.output.name for f in on_ray.files] == [f.output.name for f in local.files] == [
        "x-train-efficientnet_lite0.h5", "x-train-efficientnet_lite1.h5",
        "x-val-efficientnet_lite0.h5", "x-val-efficientnet_lite1.h5"]
    for f in local.files:
        assert_same_rows(f.output, tmp_path / "ray" / f.output.name)
    with FeatureStore(tmp_path / "ray" / "x-train-efficientnet_lite0.h5") as train, \
            FeatureStore(tmp_path / "ray" / "x-val-efficientnet_lite0.h5") as val:
        assert len(train) == 16 and len(val) == 6  # augmented copies on the train split only


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from featx.engines import ray as engine
from featx.extract import extract

data, out, ready, address = sys.argv[1:5]
parts = Path(out + ".parts")
real = engine.write_group

def write_then_stall(*args, **kwargs):
    # Stall in the driver once shards are on disk: the parent kills us here, with rows flushed,
    # batches in flight on Ray and images still to do, however fast or slow the machine is.
    real(*args, **kwargs)
    if len(list(parts.glob("shard-*.h5"))) >= 2:
        Path(ready).write_text("ready")
        time.sleep(3600)

engine.write_group = write_then_stall
extract(data, out, backbone="efficientnet_lite0", weights="none", image_size=48, batch_size=2, buffer_size=2,
        engine="ray", address=address, progress=False, log=lambda *a: None)
"""


def test_ray_driver_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path, ray_address):
    data = make_dataset(tmp_path / "data", n=12)
    out, ready, script = tmp_path / "kill.h5", tmp_path / "ready", tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    sigkill_once_ready(script, data, out, ready, ray_address, ready=ready)
    assert not out.exists() and len(list(Path(f"{out}.parts").glob("shard-*.h5"))) >= 2

    result = extract(data, out, batch_size=2, buffer_size=2, engine="ray", **OPTIONS)
    assert result.files[0].resumed and result.rows == 24 and 0 < result.rows_new < 24
    extract(data, tmp_path / "reference.h5", batch_size=2, buffer_size=2, **OPTIONS)
    assert_same_rows(out, tmp_path / "reference.h5")


def _descendants(pid: int) -> list[int]:
    """Processes below `pid` (this test's own Ray: raylet, workers), never another user's Ray."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_ray_backbone_actor_killed_mid_run_is_restarted_and_the_rows_are_complete(tmp_path, ray_address, monkeypatch):
    from featx.engines import ray as engine

    data = make_dataset(tmp_path / "data", n=60)
    out = tmp_path / "lost.h5"
    killed, tried = [], []
    real = engine.write_group

    def write_then_kill_the_actor(*args, **kwargs):
        # In the driver, right after the first shard: the actor is mid-run with most images still to do.
        real(*args, **kwargs)
        if list(Path(f"{out}.parts").glob("shard-*.h5")) and not tried:
            tried.append(True)
            for pid in _descendants(os.getpid()):
                try:
                    title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if title.startswith("ray::MapWorker"):  # the backbone actor
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

    monkeypatch.setattr(engine, "write_group", write_then_kill_the_actor)
    result = extract(data, out, batch_size=2, buffer_size=2, engine="ray", **OPTIONS)
    assert killed, "no backbone actor was found to kill"
    assert result.rows == 120 and result.images_processed == 120
    extract(data, tmp_path / "reference.h5", batch_size=2, buffer_size=2, **OPTIONS)
    assert_same_rows(out, tmp_path / "reference.h5")


def test_ray_usage_errors_say_what_to_do(tmp_path, ray_address):
    data = make_dataset(tmp_path / "data", n=2)
    with pytest.raises(FeatxError, match="use at most 1"):
        extract(data, tmp_path / "x.h5", engine="ray", workers=2, **OPTIONS)
    with pytest.raises(FeatxError, match="has 0 GPU"):
        extract(data, tmp_path / "x.h5", engine="ray", gpus_per_worker=1, **OPTIONS)
    with pytest.raises(FeatxError, match="options of --engine ray"):
        extract(data, tmp_path / "x.h5", address="127.0.0.1:1", **OPTIONS)
    with pytest.raises(FeatxError, match="use local or ray"):
        extract(data, tmp_path / "x.h5", engine="spark", **OPTIONS)
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.parts").exists()


def test_joblib_work_runs_as_ray_tasks(ray_address):
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    from featx.engines.ray import joblib_on_ray

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] + 0.3 * rng.normal(size=60) > 0).astype(int)
    search = GridSearchCV(LogisticRegression(), {"C": [0.01, 1.0, 100.0]}, cv=3, n_jobs=2)
    here = search.fit(X, y).best_params_
    with joblib_on_ray(log=lambda *a: None):
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(4))
        # A thread preference is only a default: the Ray backend takes over from it too.
        pids += joblib.Parallel(n_jobs=2, prefer="threads")(joblib.delayed(os.getpid)() for _ in range(4))
        on_ray = search.fit(X, y).best_params_
    assert os.getpid() not in pids  # Ray worker processes did the work
    assert on_ray == here


def test_train_on_ray_runs_the_path_searches_there_and_scores_as_locally(tmp_path, ray_address):
    from featx.engines.ray import joblib_on_ray
    from featx.heads._parallel import parallel_map
    from featx.train import train

    with joblib_on_ray(log=lambda *a: None):
        pids = parallel_map(lambda _: os.getpid(), range(4), n_jobs=2)  # the searches' folds go through this
    assert os.getpid() not in pids
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 16))
    labels = np.repeat(np.arange(3), 20)
    with HDF5DatasetWriter((0, 16), tmp_path / "f.h5") as writer:
        writer.store_class_labels(["a", "b", "c"])
        writer.add(centres[labels] + rng.normal(size=(60, 16)), labels, paths=[f"{i}.png" for i in range(60)])
    options = dict(heads="logreg,svm", bootstrap=0, report=False, progress=False, log=lambda *a: None)
    local = train(tmp_path / "f.h5", output=tmp_path / "local", **options)
    on_ray = train(tmp_path / "f.h5", output=tmp_path / "ray", engine="ray", **options)
    assert [(r["head"], r["params"], r["accuracy"]) for r in on_ray.rows] == \
        [(r["head"], r["params"], r["accuracy"]) for r in local.rows]


def test_cli_refuses_an_address_nobody_answers_on_in_one_line(tmp_path):
    import socket

    with socket.socket() as probe:  # a loopback port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = make_dataset(tmp_path / "data", n=1)
    done = subprocess.run([sys.executable, "-m", "featx", "extract", str(data), "--engine", "ray", "--address",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"featx: error: no Ray cluster answers at 127.0.0.1:{port}")
    assert "Traceback" not in done.stderr


def test_import_featx_and_help_load_no_ray():
    code = "import sys, featx, featx.cli; featx.cli.build_parser(); print(sorted(m for m in sys.modules if m == 'ray'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr
