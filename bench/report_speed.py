"""Report page speed by part, before (193b0d8) and after, and `featx train` wall time against its fit time.

    python bench/report_speed.py [--data synthetic,synthetic-classes,knee] [--before 193b0d8] [--no-train]
                                 [--train-before c6ec3a5] [--repeats 2]

Datasets: (1) bench/heads_speed.py's synthetic 10,000 x 1,280 rows of 5 graded classes (no images), tested
on 2,500 more; "synthetic-classes": the same rows as 5 plain classes (the label issues' neighbour vote runs
only there); (2) the knee features ``../shared/data/features/knee_kl_full-{train,val}.h5`` (5,778 + 826 x
1,280), with their thumbnails from ``../shared/data/knee_kl`` where the image is there.

Each version runs in its own child process (the old one from `git archive`, so this checkout is not touched):
a logreg head is fitted on the training rows, then `build_report` writes the page as `featx train --test` does.
Parts: out-of-fold probabilities, label issues, map, thumbnails, HTML. The old code does not time its parts: its
functions are wrapped with timers where its build_report calls them, and its HTML is what remains of its total.
Then the command `featx train TRAIN --test TEST --heads logreg` runs in a fresh Python on feature files of the same
rows (the shared knee files themselves), that of --train-before and this checkout's alternating: its wall time,
start-up and imports included, against the fit time it prints (goal: wall <= fit + 3 s).
Timings on a shared machine are noisy: the load average is printed beside each table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
PARTS = ("out-of-fold probabilities", "label issues", "map", "thumbnails", "HTML")


def _load(name):
    """(train Rows, test Rows, class names, graded) of a dataset, or None when it is absent."""
    from featx.rows import Rows

    if name in ("synthetic", "synthetic-classes"):
        sys.path.insert(0, str(HERE))
        from heads_speed import synthetic

        X, y, X_test, y_test = synthetic()
        graded = name == "synthetic"  # integer class names are grades; "class0".. are plain classes
        return Rows.of(X, y, source="synthetic"), Rows.of(X_test, y_test, source="synthetic test"), \
            [str(k) if graded else f"class{k}" for k in range(5)], graded
    import h5py

    rows = []
    for split in ("train", "val"):
        path = SHARED / "features" / f"knee_kl_full-{split}.h5"
        if not path.is_file():
            return None
        with h5py.File(path, "r") as handle:
            rows.append(Rows.of(handle["features"][:].astype(np.float32), handle["labels"][:],
                                [p.decode() if isinstance(p, bytes) else p for p in handle["paths"][:]],
                                root=str(SHARED / "knee_kl" / split), source=f"knee {split}"))
            names = [n.decode() if isinstance(n, bytes) else n for n in handle["label_names"][:]]
    return rows[0], rows[1], names, True


def child(name: str, out: Path) -> dict:
    """Time the page build of this process's featx on dataset `name`; the parts as a dict."""
    import featx.report.build as build
    from featx.heads import make_head
    from featx.report import ReportData, build_report

    loaded = _load(name)
    if loaded is None:
        return {}
    train, test, names, graded = loaded
    started = time.perf_counter()
    head = make_head("logreg", n_classes=len(names)).fit(train.X, train.y)
    fit = time.perf_counter() - started
    summary = ReportData(title=f"bench {name}", class_names=names, graded=graded)
    after = hasattr(build, "_own_out_of_fold")
    parts: dict[str, float] = {}
    if not after:
        _time_old_parts(build, parts)
    started = time.perf_counter()
    if after:
        result = build_report(out / f"{name}-report.html", head, summary, train, test, log=lambda _: None,
                              fitted=head)
        parts = dict(result.timings)
    else:
        result = build_report(out / f"{name}-report.html", head, summary, train, test, log=lambda _: None)
    total = time.perf_counter() - started
    if not after:
        parts["HTML"] = total - sum(parts.values())
    return {"fit": fit, "total": total, "issues": result.label_issues, "rows": len(train.y), **parts}


def _time_old_parts(build, parts: dict) -> None:
    """Time the old build_report's parts in its own run: its functions wrapped where build and page call them
    (the old code does not time its parts). Its HTML is what remains of its total."""
    import featx.report.page as page

    def timed(module, name, part):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            clock = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                parts[part] = parts.get(part, 0.0) + time.perf_counter() - clock

        setattr(module, name, wrapper)

    timed(build, "out_of_fold_probabilities", "out-of-fold probabilities")
    timed(build, "find_label_issues", "label issues")
    timed(page, "layout_2d", "map")
    timed(page, "make_thumbnails", "thumbnails")


def _feature_files(name: str, out: Path) -> list[Path] | None:
    """Training and test feature files of the dataset: the shared knee files as they are, the synthetic rows
    written once."""
    if name == "knee":
        files = [SHARED / "features" / f"knee_kl_full-{split}.h5" for split in ("train", "val")]
        return files if all(f.is_file() for f in files) else None
    from featx.store import HDF5DatasetWriter

    loaded = _load(name)
    files = []
    for rows, split in zip(loaded[:2], ("train", "test")):
        path = out / f"{name}-{split}.h5"
        writer = HDF5DatasetWriter(rows.X.shape, path, mode="w")
        writer.store_class_labels(loaded[2])
        writer.add(rows.X, rows.y)
        writer.close()
        files.append(path)
    return files


def train_wall(code: Path, files: list[Path]) -> dict:
    """`featx train TRAIN --test TEST --heads logreg` of the featx in `code`, in a fresh Python: the command's
    wall seconds (start-up and imports included, as a user waits for them) and the fit seconds it prints."""
    out = Path(tempfile.mkdtemp())
    script = f"import sys; sys.path.insert(0, {str(code)!r}); from featx.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", script, "train", str(files[0]), "--test", str(files[1]), "--heads", "logreg",
               "--output", str(out / "models")]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=out)
    wall = time.perf_counter() - started
    fit = re.search(r"logreg: \S+ \S+ in ([0-9.]+) s", done.stdout)
    if done.returncode or fit is None:
        print(done.stdout[-2000:], done.stderr[-3000:])
        return {}
    return {"wall": wall, "fit": float(fit.group(1))}


def _run(code: Path, mode: str, name: str) -> dict:
    out = Path(tempfile.mkdtemp())
    script = (f"import sys, json; sys.path.insert(0, {str(code)!r}); sys.path.insert(1, {str(HERE)!r}); "
              f"import report_speed as b; from pathlib import Path; "
              f"print('RESULT', json.dumps(b.{mode}({name!r}, Path({str(out)!r}))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=out)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        print(done.stderr[-3000:])
        return {}
    return json.loads(lines[-1][len("RESULT "):])


def _checkout(ref: str) -> Path:
    """featx at git `ref`, unpacked into a temporary folder (this checkout is not touched)."""
    folder = Path(tempfile.mkdtemp()) / f"featx-{ref}"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", ref, "featx"], cwd=HERE.parent, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _load_line() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic,synthetic-classes,knee")
    parser.add_argument("--before", default="193b0d8")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--train-before", default="c6ec3a5", help="the version whose featx train is timed beside")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each version's featx train, alternating")
    args = parser.parse_args()
    before = _checkout(args.before)
    after = HERE.parent
    train_before = _checkout(args.train_before)
    for name in args.data.split(","):
        print(f"\n== {name}: page build by part, seconds ({_load_line()})", flush=True)
        old, new = _run(before, "child", name), _run(after, "child", name)
        print(f"before: {json.dumps(old)}\nafter: {json.dumps(new)}", flush=True)
        if not new:
            print(f"skipped: {name} is absent or failed")
            continue
        print(f"{new['rows']:,} training rows; logreg fit {new['fit']:.1f} s (after), "
              f"{old.get('fit', float('nan')):.1f} s (before); issues listed: {old.get('issues')} before, "
              f"{new['issues']} after")
        print(f"{'part':28s} {'before':>8s} {'after':>8s} {'ratio':>7s}")
        for part in (*PARTS, "total"):
            a, b = old.get(part), new.get(part)
            if a is None and b is None:
                continue
            ratio = f"{a / b:6.1f}x" if a and b else ""
            fa, fb = ("-" if v is None else f"{v:.2f}" for v in (a, b))
            print(f"{part:28s} {fa:>8s} {fb:>8s} {ratio:>7s}")
        if not args.no_train:
            _train_walls(name, {args.train_before: train_before, "this checkout": after}, args.repeats)
    return 0


def _train_walls(name: str, versions: dict[str, Path], repeats: int) -> None:
    """The whole `featx train` command of each version, alternating, `repeats` times each."""
    files = _feature_files(name, Path(tempfile.mkdtemp()))
    if files is None:
        print(f"skipped featx train: {name} is absent")
        return
    print(f"featx train {files[0].name} --test {files[1].name} --heads logreg: wall - fit (goal <= 3 s)")
    for _ in range(repeats):
        for label, code in versions.items():
            timed = train_wall(code, files)
            if timed:
                print(f"  {label:14s} wall {timed['wall']:5.2f} s, fit {timed['fit']:5.2f} s, wall - fit "
                      f"{timed['wall'] - timed['fit']:.2f} s ({_load_line()})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
