"""Where fine-tuning runs: this process (MirroredStrategy over its GPUs when it sees several) or Ray Train.

Both engines run the same training function, `train_fn(*args, strategy=..., checkpoint=..., log=...,
**kwargs)` (featx.finetune.top.train_top), and hand back what it returns, so the driver writes
featx's outputs the same way whichever engine trained. On Ray, `ray.train.tensorflow.TensorflowTrainer`
starts the workers and sets TF_CONFIG; each worker builds a MultiWorkerMirroredStrategy, so every
step's gradients are averaged over all workers' parts of the global batch and all workers keep the
same weights. Worker 0 alone writes the checkpoint; it sends its epoch lines, then its return value
(the best weights and the history), to the driver through a Ray queue.

As for the Ray extraction engine, every node needs featx installed and the feature files (and the
checkpoint's folder) at the same path: a shared file system.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from featx.engines.ray import INSTALL_HINT, connect
from featx.errors import FeatxError

__all__ = ["ENGINES", "run_training", "worker_count"]

ENGINES = ("local", "ray")


def run_training(train_fn: Callable, *args, engine: str = "local", address: str | None = None,
                 workers: int | None = None, checkpoint=None, log: Callable[[str], object] = print,
                 local_kwargs: dict | None = None, **kwargs):
    """`train_fn(*args, strategy=..., checkpoint=..., log=..., **kwargs)` on `engine`; returns worker 0's result.

    local_kwargs: passed only when training runs in this process without a strategy (e.g. a network
    already built: a Keras model neither pickles to Ray workers nor moves into a strategy's scope).
    workers: Ray Train workers (default: one per GPU of the cluster, else one per node).
    """
    if engine not in ENGINES:
        raise FeatxError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "local":
        if workers is not None or address is not None:
            raise FeatxError("--workers and --address choose Ray Train workers: add --engine ray, or leave them out")
        strategy = _local_strategy(log)
        extra = dict(local_kwargs or {}) if strategy is None else {}
        return train_fn(*args, strategy=strategy, checkpoint=checkpoint, log=log, **kwargs, **extra)
    return _run_on_ray(train_fn, args, kwargs, address=address, workers=workers, checkpoint=checkpoint, log=log)


def _local_strategy(log):
    """MirroredStrategy over this machine's GPUs when it has several; None (TensorFlow's default) otherwise."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) < 2:
        return None
    log(f"training on {len(gpus)} GPUs of this machine (MirroredStrategy)")
    return tf.distribute.MirroredStrategy()


# ----------------------------------------------------------------------------------------------
# Ray Train


def worker_count(ray, workers: int | None) -> tuple[int, bool]:
    """(Ray Train workers, whether each takes a GPU): `workers`, or one per GPU, else one per node."""
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    if workers is None:
        # TensorFlow already keeps all of a node's cores busy: a second CPU worker per node only competes.
        workers = gpus or sum(1 for node in ray.nodes() if node.get("Alive"))
    workers = int(workers)
    if workers < 1:
        raise FeatxError(f"--workers must be at least 1 on Ray, got {workers}")
    if gpus:
        if workers > gpus:
            raise FeatxError(f"--workers {workers} but the Ray cluster has {gpus} GPU(s): use at most {gpus}")
        return workers, True
    if workers > cpus:
        raise FeatxError(f"--workers {workers} but the Ray cluster has {cpus} CPU(s): use at most {cpus}")
    return workers, False


def _ray_train():
    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.tensorflow import TensorflowTrainer
    except ImportError:
        raise FeatxError(f"fine-tuning on Ray needs Ray Train: {INSTALL_HINT}") from None
    return TensorflowTrainer, ScalingConfig, RunConfig


def _run_on_ray(train_fn, args, kwargs, *, address, workers, checkpoint, log):
    ray = connect(address, log=log)
    TensorflowTrainer, ScalingConfig, RunConfig = _ray_train()
    from ray.train import WorkerGroupError
    from ray.util.queue import Queue

    count, use_gpu = worker_count(ray, workers)
    log(f"training on {count} Ray Train worker(s) ({'one GPU' if use_gpu else 'CPUs'} each, "
        "MultiWorkerMirroredStrategy)")
    lines = Queue(actor_options={"num_cpus": 0})  # holds no CPU the workers need
    spec = dict(train_fn=train_fn, args=args, kwargs=kwargs, lines=lines,
                checkpoint=None if checkpoint is None else str(Path(checkpoint).resolve()))
    storage = tempfile.mkdtemp(prefix="featx-ray-train-")
    trainer = TensorflowTrainer(_worker, train_loop_config=spec,
                                scaling_config=ScalingConfig(num_workers=count, use_gpu=use_gpu),
                                run_config=RunConfig(name="featx-finetune", storage_path=storage))
    relay = _Relay(lines, log)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit()
    except WorkerGroupError as error:
        raise _user_error(error) or error from None
    finally:
        # Ray Train replaces the SIGINT handler to abort its run; featx's Ctrl-C handling needs its own back.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
        relay.stop()
        shutil.rmtree(storage, ignore_errors=True)
    if not relay.results:
        kept = f"; the checkpoint {checkpoint} keeps every finished epoch" if checkpoint is not None else ""
        raise FeatxError(f"training on Ray was aborted before it finished{kept}: rerun the same command to resume")
    return relay.results[0]


def _user_error(error) -> FeatxError | None:
    """A worker's FeatxError (a user mistake such as changed options) as the driver's own one-line error."""
    failures = getattr(error, "worker_failures", {}) or {}
    for rank in sorted(failures):
        if isinstance(failures[rank], FeatxError):
            return failures[rank]
    return None


class _Relay:
    """Logs the lines worker 0 puts on a Ray queue while the driver waits for the trainer, and keeps its result.

    A queue rather than Ray Train's `Result.return_value`, which Ray 2.51 (featx's floor) lacks.
    """

    def __init__(self, lines, log):
        self.lines, self.log = lines, log
        self.results = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="featx-ray-train-log")
        self.thread.start()

    def _run(self):
        from ray.util.queue import Empty

        while True:
            try:
                kind, value = self.lines.get(timeout=0.5)
            except Empty:
                if self.done.is_set():
                    return
                continue
            except Exception:  # the queue's actor is gone (Ray shut down): nothing more will come
                return
            if kind == "result":
                self.results.append(value)
            else:
                self.log(value)

    def stop(self):
        self.done.set()
        self.thread.join(timeout=30)


def _worker(spec: dict):
    """One Ray Train worker: the training function under MultiWorkerMirroredStrategy; worker 0 sends its result."""
    import tensorflow as tf
    from ray import train

    context = train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # Built first: the strategy reads TF_CONFIG (set by Ray Train) and must exist before any other TensorFlow op.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    lines = spec["lines"]
    log = (lambda line: lines.put(("line", str(line)))) if rank == 0 else (lambda line: None)
    with contextlib.ExitStack() as stack:
        checkpoint = spec["checkpoint"]
        if checkpoint is not None and rank != 0:
            # Every worker resumes from the same state, but only worker 0 writes the real checkpoint.
            private = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="featx-worker-"))) / "checkpoint"
            if Path(checkpoint).exists():
                shutil.copyfile(checkpoint, private)
            checkpoint = str(private)
        if world > 1:
            stack.enter_context(keras_multi_worker_fit())
        result = spec["train_fn"](*spec["args"], strategy=strategy, checkpoint=checkpoint, log=log, **spec["kwargs"])
    if rank == 0:
        lines.put(("result", result))


@contextlib.contextmanager
def keras_multi_worker_fit():
    """Let Keras 3's `fit` run under a MultiWorkerMirroredStrategy of several workers (TensorFlow backend).

    Keras reduces across workers in two places that only work with one worker: (1) before the first
    epoch it averages a whole (x, y) batch with one `strategy.reduce`, which cannot take a tuple; it
    only needs the batch's shapes and dtypes, which this worker's own part gives; (2) each step it
    averages the scalar loss and metrics with `axis=0`, which a scalar has not: the mean over the
    workers (axis=None) is the value Keras means. Training itself (the all-reduced gradients) is
    Keras's own. Both places read the same in Keras 3.9 (featx's floor) and 3.15. Measured: with SGD,
    2 workers end with exactly the weights of one process on the same global batches.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as keras_trainer

    trainer_class = keras_trainer.TensorFlowTrainer
    symbolic_build, reduce_per_replica = trainer_class._maybe_symbolic_build, keras_trainer.reduce_per_replica

    def local_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                batch = next(batches)
                break
            local = self.distribute_strategy.experimental_local_results
            data_batch = tree.map_structure(lambda value: local(value)[0], batch)
        return symbolic_build(self, data_batch=data_batch)

    def scalar_mean(values, strategy, reduction):
        if reduction == "auto":
            return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    trainer_class._maybe_symbolic_build, keras_trainer.reduce_per_replica = local_symbolic_build, scalar_mean
    try:
        yield
    finally:
        trainer_class._maybe_symbolic_build, keras_trainer.reduce_per_replica = symbolic_build, reduce_per_replica
