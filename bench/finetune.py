"""Fine-tuning against the frozen probe it must beat, on the shared real images.

    python bench/finetune.py [--data knee_kl,hymenoptera] [--workdir DIR] [--no-rerun] [--seeds 1,2]

For each dataset under ../shared/data (train/ and val/ folders): the frozen probe (`featx extract`,
then `featx train --heads logreg[,ordinal] --test val`) and `featx finetune` with its defaults,
each in a child process: val scores, wall minutes, seconds per training image (caching included)
and peak RSS. Then a rerun with another --epochs, which must reuse the cached maps. --seeds: the default run again
with each of these seeds (on the cached maps), and the gain's mean and spread over all seeds. Goals (issue 20):
knee grades +0.10 val QWK over the best frozen head, <= 0.15 s per training image; ants/bees not
below the frozen logreg. The machine is shared: the load average is printed beside every number.
Skips cleanly when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def child(step: str, data: str, work: str, out: str, extra: str) -> None:
    """One measured step, run in its own process; its result goes to `out` as JSON."""
    import featx
    from featx.rows import integer_names

    name, work = Path(data).name, Path(work)
    quiet = dict(progress=False, log=lambda line: None)
    if step == "extract":
        featx.extract(data, work / "features" / f"{name}.h5", **quiet)
        result = {}
    elif step == "train":
        graded = integer_names(sorted(os.listdir(Path(data) / "train")))
        trained = featx.train(work / "features" / f"{name}-train.h5", test=work / "features" / f"{name}-val.h5",
                              heads="logreg,ordinal" if graded else "logreg", output=work / "frozen",
                              report=False, **quiet)
        result = {"rows": trained.rows}
    else:
        options = json.loads(extra)
        tuned = featx.finetune(data, features=work / "maps", output=work / "tuned", progress=False,
                               log=lambda line: print(line, flush=True), **options)
        print(tuned, flush=True)
        result = {"rows": tuned.rows, "history": tuned.history, "best_epoch": tuned.best_epoch}
    Path(out).write_text(json.dumps(result, default=float))


def measured(step: str, data: Path, work: Path, extra: dict | None = None) -> dict:
    """Run one step in a child; its result with wall seconds and peak RSS (MB) of that child alone."""
    out = work / f"{step}.json"
    command = [sys.executable, __file__, "--child", step, str(data), str(work), str(out), json.dumps(extra or {})]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{step} on {data} failed (status {status})")
    result = json.loads(out.read_text())
    return dict(result, seconds=seconds, rss_mb=usage.ru_maxrss / 1024, load=load())


def scores(row: dict) -> str:
    qwk = f", QWK {row['qwk']:.3f} [{row['qwk_ci'][0]:.3f}, {row['qwk_ci'][1]:.3f}]" if row.get("qwk") else ""
    return f"accuracy {row['accuracy']:.3f}{qwk}"


def bench(data: Path, work: Path, rerun: bool, seeds: list[int]) -> list[str]:
    n_train = sum(len(files) for _, _, files in os.walk(data / "train"))
    extract = measured("extract", data, work)
    frozen = measured("train", data, work)
    tuned = measured("finetune", data, work)
    graded = any(row.get("qwk") is not None for row in frozen["rows"])
    metric = "qwk" if graded else "accuracy"
    lines = [f"## {data.name}: {n_train} training images", "",
             "| method | head | val | minutes | s per training image | peak RSS MB | load (1, 5, 15 min) |",
             "|---|---|---|---|---|---|---|"]
    frozen_minutes = (extract["seconds"] + frozen["seconds"]) / 60
    for row in frozen["rows"]:
        lines.append(f"| frozen (extract + train) | {row['head']} | {scores(row)} | {frozen_minutes:.1f} | "
                     f"{frozen_minutes * 60 / n_train:.3f} | {max(extract['rss_mb'], frozen['rss_mb']):.0f} | "
                     f"{frozen['load']} |")
    for row in tuned["rows"]:
        lines.append(f"| finetune defaults ({row['features']}) | {row['head']} | {scores(row)} | "
                     f"{tuned['seconds'] / 60:.1f} | {tuned['seconds'] / n_train:.3f} | {tuned['rss_mb']:.0f} | "
                     f"{tuned['load']} |")
    best_frozen = max(row[metric] for row in frozen["rows"])
    best_tuned = max(row[metric] for row in tuned["rows"] if row["features"] == "fine-tuned")
    lines += ["", f"val {metric}: best frozen {best_frozen:.3f}, fine-tuned {best_tuned:.3f} "
                  f"({best_tuned - best_frozen:+.3f}); best epoch {tuned['best_epoch']}; "
                  f"{tuned['seconds'] / n_train:.3f} s per training image"]
    if seeds:
        gains = [best_tuned - best_frozen]
        for seed in seeds:
            again = measured("finetune", data, work, {"seed": seed, "overwrite": True})
            tuned_seed = max(row[metric] for row in again["rows"] if row["features"] == "fine-tuned")
            gains.append(tuned_seed - best_frozen)
            lines.append(f"seed {seed}: fine-tuned {tuned_seed:.3f} ({tuned_seed - best_frozen:+.3f}); "
                         f"{again['seconds']:.0f} s on the cached maps ({again['load']})")
        spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
        lines.append(f"gain over {len(gains)} seeds (0 and {', '.join(map(str, seeds))}): mean "
                     f"{statistics.mean(gains):+.3f}, standard deviation {spread:.3f}")
    if rerun:
        again = measured("finetune", data, work, {"epochs": 1, "overwrite": True})
        lines.append(f"rerun with --epochs 1 --overwrite (cached maps): {again['seconds']:.0f} s ({again['load']})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="knee_kl,hymenoptera")
    parser.add_argument("--workdir", help="keep outputs here (default: a temporary folder)")
    parser.add_argument("--no-rerun", action="store_true", help="skip the rerun with other epochs")
    parser.add_argument("--seeds", default="", help="more seeds for the default run, e.g. 1,2 (seed 0 always runs)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    if not DATA.is_dir():
        print(f"skipped: {DATA} not found (the shared real images)")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.data.split(","):
            data = DATA / name
            if not (data / "train").is_dir():
                print(f"skipped {name}: {data}/train not found")
                continue
            work = Path(args.workdir or scratch) / name
            work.mkdir(parents=True, exist_ok=True)
            print(f"{name}: start ({load()})", flush=True)
            seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
            print("\n".join(bench(data, work, rerun=not args.no_rerun, seeds=seeds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
