"""Stage 1 on Ray Data: the runner's decoding and backbones, spread over a cluster's CPUs and GPUs.

The driver lists the images with `featx.images` (the listing is what resume and the shared class
list of split folders are keyed on, so it must be the local engine's). Ray Data then carries the
listed files through two steps: decode tasks that read and decode with the runner's own `decode`
(so features and skipped reasons match the local engine's exactly), and an actor pool
(`map_batches` with a callable class) that builds each backbone once per actor, with `num_gpus`
per actor when asked. The driver appends every output batch to the crash-safe
`HDF5DatasetWriter`, which flushes each buffer as an atomically renamed shard: a killed driver or
a failed job costs at most one buffer, and rerunning does only the paths not yet in the file or
its shards. Ray itself retries a task or restarts an actor whose worker was lost.

Every node needs featx installed, and the dataset (and a weights file, if one is given) at the
same path: a shared file system, as for any Ray Data job reading local paths.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featx.cores import usable_cores
from featx.errors import FeatxError
from featx.runner import Extraction, Item, decode, features_for_group, write_group

__all__ = ["RayExtraction", "connect", "joblib_on_ray"]

INSTALL_HINT = "pip install 'featx[ray]'"
# Blocks of at most this many blocks' worth of listing: a million images make blocks of ~100
# images instead of a million single-batch blocks, which would cost Ray more to schedule than to run.
_MAX_BLOCKS = 10_000
# Stands for "decoded" in the runner's (item, arrays, reason) tuples: the pixels stayed on Ray.
_DECODED = ()


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs both; fail here, not mid-run
    except ImportError:
        raise FeatxError(f"the Ray engine needs Ray Data: {INSTALL_HINT}") from None
    return ray


def connect(address=None, *, log=print):
    """Ray for featx: the one this process already started, a cluster at `address` (or RAY_ADDRESS),
    or a new local instance on all cores. Returns the ray module.

    A Ray featx starts stays up for the rest of the process (as `ray.data` does); `ray.shutdown()` ends it.
    """
    ray = _ray()
    if not ray.is_initialized():
        # Workers' output and Ray's notices stay in Ray's session logs; errors still reach featx as exceptions.
        quiet = dict(logging_level=logging.ERROR, log_to_driver=False)
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            _check_reachable(address)
            try:
                ray.init(address=address, **quiet)
            except Exception as error:  # ConnectionError, ValueError, or Ray's own: all mean "not there"
                raise FeatxError(f"cannot join the Ray cluster at {address} ({_first_line(error)}); start one with "
                                 "`ray start --head` and pass the address it prints, or leave out --address "
                                 "to run on this machine") from None
        else:
            # "local": a new instance, never one a stale `ray start` left behind; no dashboard to serve.
            # The cores this process may use (affinity, container quotas), not the machine's.
            ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False, **quiet)
        resources = ray.cluster_resources()
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        log(f"running on {where}: {int(resources.get('CPU', 0))} CPUs, {int(resources.get('GPU', 0))} GPUs")
    _quiet_ray_data()
    return ray


def _check_reachable(address: str) -> None:
    """Refuse a HOST:PORT nobody listens on at once: Ray itself retries such an address for minutes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # "auto", "ray://...": Ray's own forms, checked by Ray
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise FeatxError(f"no Ray cluster answers at {address} ({error.strerror or error}); start one with "
                         "`ray start --head` and pass the address it prints, or leave out --address "
                         "to run on this machine") from None


def _quiet_ray_data():
    # featx prints its own progress bar and timing line; Ray Data's would interleave with them.
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def actors_for(ray, workers, gpus_per_worker) -> int:
    """Backbone actors to run: `workers`, or one per node (CPU) or per `gpus_per_worker` GPUs."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if gpus_per_worker:
        if gpus < gpus_per_worker:
            raise FeatxError(f"--gpus-per-worker {gpus_per_worker:g} but the Ray cluster has {gpus:g} GPU(s); "
                             "leave it out to run on CPUs, or join a cluster with GPUs (--address)")
        default = int(gpus // gpus_per_worker)
    else:
        # TensorFlow already uses every core of its machine: a second CPU actor per node only competes.
        default = sum(1 for node in ray.nodes() if node.get("Alive"))
    actors = default if workers is None else int(workers)
    if actors < 1:
        raise FeatxError(f"--workers must be at least 1 on Ray, got {actors}")
    if actors >= cpus:
        # Each actor holds a CPU; decode tasks need at least one more, or the pipeline stalls.
        raise FeatxError(f"--workers {actors} backbone actors would hold all {cpus} CPUs of the Ray cluster and leave "
                         f"none to decode images; use at most {max(cpus - 1, 1)}" if cpus > 1 else
                         "the Ray cluster has 1 CPU: Ray needs one for a backbone actor and one to decode; "
                         "use the local engine")
    return actors


# ----------------------------------------------------------------------------------------------
# the two Ray steps: decode tasks, backbone actors


def decode_batch(batch: dict, *, sizes, augment, tta, crop, seed, reduce=False) -> dict:
    """Ray task: read and decode a batch of listed files with the runner's `decode`.

    Pixels go out as (n, copies, size, size, 3) uint8 per input size; a skipped file keeps zeros and its reason.
    """
    n = len(batch["path"])
    copies = (1 + augment) * (2 if tta == "flip" else 1)
    pixels = {size: np.zeros((n, copies, size, size, 3), np.uint8) for size in sizes}
    reasons = np.full(n, "", dtype=object)
    seconds = np.zeros(n)
    for i in range(n):
        item = Item(path=str(batch["path"][i]), file=Path(str(batch["file"][i])), label=int(batch["label"][i]))
        arrays, reason, seconds[i] = decode(item, sizes, augment=augment, tta=tta, crop=crop, seed=seed,
                                             reduce=reduce)
        if arrays is None:
            reasons[i] = reason
        else:
            for size in sizes:
                pixels[size][i] = arrays[size]
    out = {key: value for key, value in batch.items() if key != "file"}
    out.update(reason=reasons, decode_s=seconds, **{f"pixels_{size}": pixels[size] for size in sizes})
    return out


class BackboneActor:
    """Ray actor: builds the backbones once (from their recipes) and turns pixel batches into feature rows."""

    def __init__(self, recipes, *, tta, batch_size, runtime="auto"):
        from featx.backbones import from_recipe

        # from_recipe checks the weights' sha256: every actor runs exactly the driver's model. "auto" picks
        # the runtime for the actor's own node (LiteRT on CPUs, Keras where it sees a GPU): same features.
        self.backbones = [from_recipe(recipe, runtime=runtime) for recipe in recipes]
        self.tta = tta
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        started = time.perf_counter()
        n = len(batch["path"])
        decoded = np.asarray(batch["reason"] == "", dtype=bool)
        out = {key: value for key, value in batch.items() if not key.startswith("pixels_")}
        for b, backbone in enumerate(self.backbones):
            pixels = batch[f"pixels_{backbone.input_size}"]
            rows_per_image = pixels.shape[1] // 2 if self.tta == "flip" else pixels.shape[1]
            features = np.zeros((n, rows_per_image, backbone.feature_dim), np.float32)
            take = np.flatnonzero(decoded & np.asarray(batch[f"need_{b}"], dtype=bool))
            if take.size:
                rows = features_for_group(backbone, [{backbone.input_size: pixels[i]} for i in take], tta=self.tta,
                                           batch_size=self.batch_size)
                features[take] = np.stack(rows)
            out[f"features_{b}"] = features
        out["inference_s"] = np.full(n, (time.perf_counter() - started) / max(n, 1))
        return out


# ----------------------------------------------------------------------------------------------
# the driver


class RayExtraction(Extraction):
    """The runner's `Extraction` (writers, resume, summaries) with images decoded and inferred on Ray."""

    def __init__(self, models, outputs, options, *, log):
        super().__init__(models, outputs, options, log=log)
        engine = options.engine
        self.address, self.runtime, self.gpus_per_worker = engine.address, options.backbones.runtime, \
            engine.gpus_per_worker
        # Checked now, before any writer opens: a cluster too small for the actors asked for is a usage error.
        self.actors = actors_for(connect(self.address, log=self.log), engine.workers, self.gpus_per_worker)
        self.timer.t.update(engine="ray", actors=self.actors, first_batch=0.0)

    def _run(self, items, writers, needs, feeding, desc: str) -> list[tuple[str, str]]:
        """Decode, infer and write every item on Ray; returns the (path, reason) of those skipped."""
        if not items:
            return []
        ray = connect(self.address, log=self.log)
        sizes = sorted({model.input_size for model in self.models})
        dataset = (
            _listing(ray, items, needs, rows_per_block=max(feeding.batch_size, math.ceil(len(items) / _MAX_BLOCKS)))
            .map_batches(decode_batch, batch_size=feeding.batch_size, batch_format="numpy",
                         fn_kwargs=dict(sizes=sizes, augment=feeding.augment, tta=feeding.tta, crop=feeding.crop,
                                        seed=feeding.seed, reduce=feeding.decode == "reduced"))
            .map_batches(BackboneActor, batch_size=feeding.batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=self.actors),
                         # With the decode tasks' resources (CPU only), Ray fuses decoding into the actor:
                         # measured no slower on CPUs, where inference is 95% of the work. GPU actors are
                         # never fused, so decoding stays on the cluster's CPUs while the GPUs infer.
                         num_cpus=1, num_gpus=self.gpus_per_worker or None,
                         fn_constructor_args=([model.recipe() for model in self.models],),
                         fn_constructor_kwargs=dict(tta=feeding.tta, batch_size=feeding.batch_size,
                                                    runtime=self.runtime))
        )
        bar = tqdm(total=len(items), unit="img", desc=desc, disable=not self.writing.progress, dynamic_ncols=True)
        skips = []
        try:
            batches = iter(dataset.iter_batches(batch_size=None, batch_format="numpy"))
            started = time.perf_counter()
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                self.timer.add("wait", time.perf_counter() - t0)
                if batch is None:
                    break
                if started is not None:
                    # Until the first batch: Ray's planning and the actors' start (TensorFlow, the model).
                    self.timer.add("first_batch", time.perf_counter() - started)
                    started = None
                t0 = time.perf_counter()
                decoded, results = _unpack(batch, len(writers))
                skips += [(item.path, reason) for item, arrays, reason in decoded if arrays is None]
                for b, writer in enumerate(writers):
                    write_group(writer, decoded, results[b], needs[b])
                self.timer.add("write", time.perf_counter() - t0)
                self.timer.add("decode", float(np.sum(batch["decode_s"])))
                self.timer.add("inference", float(np.sum(batch["inference_s"])))
                bar.update(len(decoded))
        finally:
            bar.close()
        return skips


def _listing(ray, items, needs, *, rows_per_block: int):
    """The items to do as a Ray dataset: path, absolute file, label, and need_<b> (backbone b still needs it)."""
    import pyarrow as pa

    columns = {
        "path": [item.path for item in items],
        # Absolute: Ray workers do not run in the driver's working directory.
        "file": [os.path.abspath(item.file) for item in items],
        "label": np.array([item.label for item in items], dtype=np.int64),
    }
    for b, need in enumerate(needs):
        columns[f"need_{b}"] = np.array([need is None or item.path in need for item in items], dtype=bool)
    table = pa.table(columns)
    return ray.data.from_arrow([table.slice(start, rows_per_block) for start in range(0, len(items), rows_per_block)])


def _unpack(batch: dict, n_backbones: int):
    """One output batch as the runner's (decoded, results): [(item, arrays or None, reason)], {b: {path: rows}}."""
    paths = [str(p) for p in batch["path"]]
    reasons = [str(r) for r in batch["reason"]]
    decoded = [(Item(path=path, file=None, label=int(label)), None if reason else _DECODED, reason or None)
               for path, label, reason in zip(paths, batch["label"], reasons)]
    results = {}
    for b in range(n_backbones):
        need, features = batch[f"need_{b}"], batch[f"features_{b}"]
        results[b] = {path: features[i] for i, path in enumerate(paths) if need[i] and not reasons[i]}
    return decoded, results


# ----------------------------------------------------------------------------------------------
# stage 2: the heads' searches


@contextmanager
def joblib_on_ray(address=None, *, log=print):
    """Run joblib-parallel work (scikit-learn's searches, `n_jobs`) as Ray tasks while the block runs.

    Only work dispatched through joblib moves to the cluster; work a head runs on its own threads stays here.
    """
    connect(address, log=log)
    import joblib
    from ray.util.joblib import register_ray

    register_ray()
    with joblib.parallel_backend("ray"):
        yield
