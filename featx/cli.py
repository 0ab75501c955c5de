"""The `featx` command: parses arguments and calls the library, nothing more.

Each command imports its part of the library when it runs, so `featx extract` never loads
scikit-learn and `featx --help` loads neither it nor TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import sys

from featx import __version__  # featx/__init__ also quiets TensorFlow's C++ logging
from featx.choices import CONTEXTS, METRICS, UNMATCHED, heads_help  # standard library only, like recipe
from featx.errors import FeatxError
from featx.recipe import DECODE_CHOICES  # standard library only: the command still starts fast


def _cmd_info(args):
    from featx.store import describe

    for i, path in enumerate(args.files):
        if i:
            print()
        print(describe(path))


def _cmd_backbones(args):
    from featx import backbones

    if args.check:
        top = backbones.check_image(args.check, args.image, weights=args.weights)
        print(f"{args.check}: top-{len(top)} ImageNet classes for {args.image or 'the sample image'}")
        for name, prob in top:
            print(f"  {prob:6.1%}  {name}")
    else:
        print(backbones.backbones_table())


def _cmd_extract(args):
    from featx.extract import ExtractOptions, extract_with

    options = ExtractOptions.from_keywords(
        backbone=args.backbone, weights=args.weights, pooling=args.pooling, image_size=args.image_size,
        layer=args.layer, batch_size=args.batch_size, buffer_size=args.buffer_size, dtype=args.dtype,
        augment=args.augment, tta=args.tta, crop=args.crop, decode=args.decode, seed=args.seed, workers=args.workers,
        runtime=args.runtime, precision=args.precision, engine=args.engine, address=args.address,
        gpus_per_worker=args.gpus_per_worker, overwrite=args.overwrite, progress=not args.quiet, group=args.group,
        group_unmatched=args.group_unmatched)
    print(extract_with(args.dataset, args.output, options))


def _cmd_train(args):
    from featx.train import train_with

    print(train_with(args.features, _stage2_run_options(args, engine=args.engine, address=args.address)))


def _cmd_finetune(args):
    from dataclasses import fields

    from featx.finetune import FinetuneOptions, finetune_with

    given = {f.name: getattr(args, f.name) for f in fields(FinetuneOptions) if getattr(args, f.name, None) is not None}
    print(finetune_with(args.dataset, FinetuneOptions(**given, progress=not args.quiet)))


def _cmd_compare(args):
    from featx.compare import compare_with

    print(compare_with(args.features, _stage2_run_options(args, fuse=not args.no_fuse)))


def _cmd_report(args):
    from featx.report import report

    report(args.bundle, args.features, output=args.output)


def _cmd_evaluate(args):
    from featx.evaluate import evaluate

    print(evaluate(args.bundle, args.features))


def _cmd_predict(args):
    from featx.predict import predict

    result = predict(args.bundle, args.images, output=args.output, batch_size=args.batch_size, runtime=args.runtime,
                     group_unmatched=args.group_unmatched)
    print(result)


def _cmd_audit(args):
    from featx.audit import audit

    chosen = {name: getattr(args, name) for name in ("threshold", "neighbors") if getattr(args, name) is not None}
    print(audit(args.files, args.output, page=not args.no_page, **chosen))


def _cmd_demo(args):
    from featx.demo import run_demo

    run_demo(workdir=args.workdir, backbone=args.backbone, weights=args.weights)


def _runtime_option(s) -> None:
    s.add_argument("--runtime", default="auto", choices=["auto", "keras", "litert"],
                   help="what runs the backbone: auto = LiteRT on a CPU (about 3x faster, same features), "
                   "Keras/TensorFlow when a GPU is visible")


def _stage2_options(s) -> None:
    """The options train and compare share."""
    g = s.add_mutually_exclusive_group()
    g.add_argument("--test", nargs="+", help="feature file(s) to test on, one per training file (e.g. x-val.h5)")
    g.add_argument("--test-size", type=float, default=0.25, help="held-out fraction (default 0.25)")
    s.add_argument("--heads", default="logreg", help=heads_help())
    s.add_argument("--folds", type=int, help="K fold models whose probabilities are averaged")
    s.add_argument("--class-weight", choices=["balanced"])
    s.add_argument("--metric", default="accuracy", choices=METRICS)
    s.add_argument("--ordinal", action="store_true", help="treat classes as ordered grades")
    s.add_argument("-j", "--n-jobs", "--jobs", dest="n_jobs", type=int, help="parallel fits (default: all cores)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress line while a head fits")
    s.add_argument("--no-report", action="store_true", help="skip the HTML report page and label-issue CSV")
    s.add_argument("--group", metavar="REGEX", help="subjects named by REGEX's first group on each path stay on one "
                   "side of every split (a file made with extract --group records them already)")
    _unmatched_option(s)
    s.add_argument("--context", choices=CONTEXTS, help="others: beside each row, the mean features of its "
                   "subject's other images (the other eye or knee); needs subjects (--group)")


def _unmatched_option(s) -> None:
    s.add_argument("--group-unmatched", choices=UNMATCHED, default="refuse",
                   help="paths REGEX does not match: refuse (default) or make each its own subject")


def _stage2_run_options(args, **more):
    """The one options object train and compare (and every step after them) take."""
    from featx.pipeline import Options

    return Options(test=args.test, test_size=args.test_size, heads=args.heads, folds=args.folds,
                   class_weight=args.class_weight, metric=args.metric, ordinal=args.ordinal or None,
                   n_jobs=args.n_jobs, output=args.output, seed=args.seed, progress=not args.quiet,
                   report=not args.no_report, group=args.group, group_unmatched=args.group_unmatched,
                   context=args.context, **more)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="featx",
        description="Transfer learning by feature extraction: extract features from a folder of images "
        "once, then train and compare classifier heads on them in seconds.",
    )
    p.add_argument("--version", action="version", version=f"featx {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="run the whole pipeline on an embedded dataset (digits), offline")
    s.add_argument("--workdir", default=".", help="where datasets/, features/, models/ go (default: .)")
    s.add_argument("--backbone", help="NAME (default: the one `featx backbones` marks)")
    s.add_argument("--weights", default="auto")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("extract", help="extract features of a folder of images into an HDF5 file")
    s.add_argument("dataset", help="folder of class folders (or train/val/test split folders, or flat images)")
    s.add_argument("-o", "--output", help="output file (default: features/<dataset>.h5)")
    s.add_argument("--backbone", help="NAME[,NAME...] (default: the one `featx backbones` marks)")
    s.add_argument("--weights", default="auto",
                   help="auto (offline ImageNet weights), none (random), or FILE (e.g. a fine-tuned .weights.h5)")
    s.add_argument("--pooling", default="avg", choices=["avg", "max", "flatten"])
    s.add_argument("--layer", help="pool this layer's output instead of the last feature map (a cut layer, "
                   "e.g. block5c_add; a wrong name lists them)")
    s.add_argument("--image-size", type=int, help="input side in pixels (default: the backbone's)")
    s.add_argument("--crop", action="store_true", help="keep aspect ratio: resize shorter side, center crop")
    s.add_argument("--decode", choices=DECODE_CHOICES, default="reduced",
                   help="reduced (default): decode JPEGs at least 2x the input size at 1/2, 1/4 or 1/8 scale "
                        "(much faster on camera photos, never below the input size); full: every pixel")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--buffer-size", type=int, default=1000, help="rows per flush (a crash loses at most this)")
    s.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    s.add_argument("--augment", type=int, default=0, metavar="K", help="also write K augmented copies per image")
    s.add_argument("--tta", choices=["flip"], help="store the mean of the image's and its mirror's features")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int,
                   help="decoding threads (default: min(4, cores)); with --engine ray, backbone actors "
                   "(default: one per node, or per --gpus-per-worker GPUs)")
    _runtime_option(s)
    s.add_argument("--precision", default="float32", choices=["float32", "fp16"],
                   help="fp16: LiteRT in half precision where the CPU has fp16 arithmetic (features change slightly)")
    s.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process; ray: Ray Data on a cluster or a local Ray (pip install 'featx[ray]')")
    s.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start Ray here)")
    s.add_argument("--gpus-per-worker", type=float, default=0, metavar="G", help="GPUs per backbone actor (Ray)")
    s.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    s.add_argument("--group", metavar="REGEX", help=r"name each image's subject (a patient) by the first capture group "
                   r"of REGEX on its relative path, e.g. '(\d+)[LR]\.'; splits keep a subject on one side")
    _unmatched_option(s)
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_extract)

    s = sub.add_parser("train", help="train classifier heads on a feature file and compare them")
    s.add_argument("features", nargs="+", help="a feature file, or several of the same images to fuse")
    _stage2_options(s)
    s.add_argument("-o", "--output", default="models", help="folder for model bundles (default: models/)")
    s.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="ray: run the heads' searches as Ray tasks (pip install 'featx[ray]')")
    s.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start Ray here)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("finetune", help="linear probe, then fine-tune the top of a backbone from its cached maps")
    s.add_argument("dataset", help="folder of class folders, or train/ and val/ (and test/) split folders")
    s.add_argument("--backbone", help="default: efficientnet_lite0")
    s.add_argument("--weights", default="auto", help="auto (offline ImageNet weights), none (random), or FILE")
    s.add_argument("--train-from", metavar="LAYER",
                   help="cut layer: train the layers above it (default per backbone; 'input' trains every layer)")
    # Training defaults live in featx.finetune.options.DEFAULTS; None here means "that default".
    s.add_argument("--epochs", type=int, help="most epochs (default 6; early stopping on val)")
    s.add_argument("--lr", type=float, help="peak AdamW learning rate (default 2e-4)")
    s.add_argument("--warmup", type=float, help="epochs of warm-up before the cosine decay (default 0.5)")
    s.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 1e-4)")
    s.add_argument("--patience", type=int, help="stop after this many epochs without a better val score (default 3)")
    s.add_argument("--batch-size", type=int, help="default 32")
    s.add_argument("--shift", type=int, help="move each training map by up to this many cells (default 2)")
    s.add_argument("--dropout", type=float, help="dropout before the classification layer (default 0.3)")
    s.add_argument("--label-smoothing", type=float,
                   help="target mass moved off the true class; graded: to the neighbouring grades (default 0.2)")
    s.add_argument("--ordinal-loss", type=float,
                   help="graded classes: weight of (expected grade - grade)^2 beside the cross-entropy (default 0.5)")
    s.add_argument("--select", choices=["argmax", "expected"],
                   help="graded classes: keep the epoch by the QWK of the argmax or of the rounded expected grade "
                   "(default expected)")
    s.add_argument("--mixup", type=float, metavar="ALPHA",
                   help="blend each training map with another, weight from Beta(ALPHA, ALPHA) (default 0: off)")
    s.add_argument("--class-weight", choices=["balanced"])
    s.add_argument("--image-size", type=int, help="input side in pixels (default: the backbone's)")
    s.add_argument("--val-size", type=float, help="hold-out fraction without a val/ folder (default 0.2)")
    s.add_argument("--group", metavar="REGEX", help=r"without a val/ folder, the hold-out keeps each subject named by "
                   r"REGEX's first group on the path (e.g. '(\d+)[LR]\.') on one side; recorded in the maps file")
    _unmatched_option(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--features", default="features", help="folder for the cached maps (default: features/)")
    s.add_argument("--maps-dtype", choices=["float32", "float16"],
                   help="the cached maps' type (default float32: the probe equals featx train's logreg; "
                   "float16 halves the file)")
    s.add_argument("-o", "--output", default="models", help="folder for the weights file and bundles (default: models)")
    _runtime_option(s)
    s.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process (all its GPUs when it has several); ray: Ray Train workers "
                   "(pip install 'featx[ray]')")
    s.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else start Ray here)")
    s.add_argument("--workers", type=int,
                   help="Ray Train workers (default: one per GPU of the cluster, else one per node)")
    s.add_argument("--overwrite", action="store_true", help="start training over (maps with the same recipe are kept)")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar while caching maps")
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser("compare", help="the same heads on each feature file and on their fusion: the best recipe")
    s.add_argument("features", nargs="+", help="feature files of the same images (other backbones or recipes)")
    _stage2_options(s)
    s.add_argument("--no-fuse", action="store_true", help="compare the files one by one only")
    s.add_argument("-o", "--output", default="models", help="folder for the report page (default: models/)")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("evaluate", help="report a saved model on another feature file")
    s.add_argument("bundle")
    s.add_argument("features", nargs="+", help="a feature file (one per recipe for a fused model)")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("report", help="an HTML page of a bundle on a labelled feature file, with likely label errors")
    s.add_argument("bundle")
    s.add_argument("features", nargs="+", help="a feature file (one per recipe for a fused model)")
    s.add_argument("-o", "--output", help="folder or .html file (default: beside the bundle)")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("predict", help="predict classes of new images to a CSV")
    s.add_argument("bundle")
    s.add_argument("images", nargs="+", help="image files and/or folders")
    s.add_argument("-o", "--output", default="predictions.csv",
                   help="predictions CSV; a bundle trained with --group also writes <stem>-subjects.csv beside it")
    s.add_argument("--batch-size", type=int, default=32)
    _runtime_option(s)
    s.add_argument("--group-unmatched", choices=UNMATCHED,
                   help="paths the bundle's --group regex does not match (default: as in training)")
    s.set_defaults(func=_cmd_predict)

    s = sub.add_parser("audit", help="near-duplicates, subjects in several splits and outliers in feature files")
    s.add_argument("files", nargs="+", metavar="FILE", help="feature files of one recipe (e.g. x-train.h5 x-val.h5)")
    s.add_argument("-o", "--output", default="audit", help="folder for the CSVs, summary and page (default: audit/)")
    s.add_argument("--threshold", type=float,
                   help="cosine of standardised features from which two images are near-duplicates (default 0.6)")
    s.add_argument("--neighbors", type=int, help="nearest images looked at per image (default 10)")
    s.add_argument("--no-page", action="store_true", help="skip the HTML page of thumbnails")
    s.set_defaults(func=_cmd_audit)

    s = sub.add_parser("info", help="describe a feature file")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("backbones", help="list backbones, or check one on an image (--check)")
    s.add_argument("--check", metavar="NAME", help="print the top-5 ImageNet classes NAME gives an image")
    s.add_argument("image", nargs="?", help="image for --check (default: a sample image)")
    s.add_argument("--weights", default="auto")
    s.set_defaults(func=_cmd_backbones)
    return p


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message comes, not the one it was made with.

    main() runs more than once in one process (tests, notebooks) while sys.stderr is swapped and closed
    around it; a handler holding the first one would write into, and flush, a closed stream.
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass  # always sys.stderr: setStream and StreamHandler.__init__ change nothing


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # featx's own messages only: TensorFlow and friends keep their own (quieted) logging.
    logger = logging.getLogger("featx")
    if not logger.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("featx: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except FeatxError as exc:
        print(f"featx: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("featx: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
