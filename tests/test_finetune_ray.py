"""featx finetune on Ray Train: 2 CPU workers (MultiWorkerMirroredStrategy) against the single-process run.

One local Ray instance (2 CPUs) and one pair of runs serve the module: Ray and its two TensorFlow
workers cost tens of seconds to start. Both runs start from the same weights file (random weights,
saved once), so the frozen probe is identical and only the training engine differs.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'featx[ray]' (the [test] extra has it)")
try:
    import ray.train.tensorflow  # noqa: F401
except ImportError as error:  # pragma: no cover - the [ray] extra installs ray[train]
    pytest.skip(f"Ray Train cannot import ({error}): pip install 'featx[ray]'", allow_module_level=True)

from featx import backbones  # noqa: E402 - after the skip: nothing here runs without Ray Train
from featx.errors import FeatxError  # noqa: E402
from featx.finetune import finetune  # noqa: E402
from featx.finetune.distributed import run_training, worker_count  # noqa: E402

SIZE = 32  # Lite0 at 32 px: block5c_add maps are 2 x 2 x 112
# Dropout draws its masks on each worker, for that worker's half of a batch, so with it the runs differ by
# more than float rounding; the maps' flips and shifts are drawn once per global batch and stay in.
OPTIONS = dict(epochs=2, patience=5, batch_size=8, image_size=SIZE, runtime="keras", bootstrap=200, progress=False,
               dropout=0.0)


def _write_grades(root, per_class: int):
    """Grades a network can tell apart: the higher the grade, the brighter the (noisy) image."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for grade in range(3):
            folder = root / split / str(grade)
            folder.mkdir(parents=True)
            pixels = np.clip(60 + 60 * grade + rng.normal(0, 25, (count, 48, 48, 3)), 0, 255).astype(np.uint8)
            for i, image in enumerate(pixels):
                cv2.imwrite(str(folder / f"{i}.png"), image)
    return root


@pytest.fixture(scope="module")
def local_ray():
    # ignore_reinit_error: a Ray that featx's engine already started in this process serves as well.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, local_ray):
    """The same finetune command in this process and on 2 Ray Train workers (the maps are cached once)."""
    tmp = tmp_path_factory.mktemp("finetune_ray")
    data = _write_grades(tmp / "grades", per_class=12)
    weights = tmp / "start.weights.h5"
    backbones.build_keras_model("efficientnet_lite0", weights="none", image_size=SIZE).save_weights(str(weights))
    common = dict(weights=str(weights), features=tmp / "features", **OPTIONS)
    local = finetune(data, output=tmp / "local", log=lambda line: None, **common)
    lines = []
    on_ray = finetune(data, output=tmp / "ray", engine="ray", address=local_ray, workers=2, log=lines.append,
                      **common)
    return dict(tmp=tmp, local=local, ray=on_ray, lines=lines)


def test_ray_writes_the_same_output_files(runs):
    tmp = runs["tmp"]
    local = sorted(path.name for path in (tmp / "local").iterdir() if not path.name.startswith("."))
    on_ray = sorted(path.name for path in (tmp / "ray").iterdir() if not path.name.startswith("."))
    assert on_ray == local
    assert runs["ray"].weights_file.name in on_ray and runs["ray"].weights_file.stat().st_size > 0
    assert set(runs["ray"].bundles) == set(runs["local"].bundles) == {"logreg", "ordinal"}


def test_two_workers_ran_and_their_epoch_lines_reached_the_driver(runs):
    lines = runs["lines"]
    assert any(line.startswith("training on 2 Ray Train worker(s)") for line in lines)
    # Worker 0's lines, relayed through Ray: the probe, then each epoch.
    assert any(line.startswith("epoch 0 (linear probe)") for line in lines)
    assert any(line.startswith("epoch 2/2") for line in lines)
    assert [entry["epoch"] for entry in runs["ray"].history] == [entry["epoch"] for entry in runs["local"].history]


def test_two_workers_train_as_one_process_does(runs):
    """Same weights file, same cached maps, the same global batches in the same order: each step's gradients,
    averaged over the two workers' halves of a batch, are one process's up to the order of float sums. So the
    probe, every epoch's val metric and the final scores match, and the losses agree to 1e-4."""
    local, on_ray = runs["local"], runs["ray"]
    assert [entry["val_metric"] for entry in on_ray.history] == pytest.approx(
        [entry["val_metric"] for entry in local.history], abs=1e-6)
    assert [entry["loss"] for entry in on_ray.history[1:]] == pytest.approx(
        [entry["loss"] for entry in local.history[1:]], rel=1e-4)
    assert on_ray.best_epoch == local.best_epoch
    assert [(row["features"], row["head"]) for row in on_ray.rows] == [(row["features"], row["head"])
                                                                        for row in local.rows]
    for key in ("qwk", "accuracy"):
        assert [row[key] for row in on_ray.rows] == pytest.approx([row[key] for row in local.rows], abs=1e-6)


def test_too_many_workers_and_workers_without_ray_are_refused(local_ray):
    with pytest.raises(FeatxError, match="--workers 3 but the Ray cluster has 2 CPU"):
        worker_count(ray, 3)
    with pytest.raises(FeatxError, match="add --engine ray"):
        run_training(lambda **kwargs: None, workers=2)
