"""Stage 2, first steps: load labelled rows, split them, and choose the heads they can train.

The pipeline's data side (featx.pipeline fits, scores, saves and reports). Splits are seeded,
stratified by class and grouped by source image (featx.rows.row_groups); every check that refuses
too few images, too little memory or mismatched files runs here, before any head is fitted.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.choices import HEAD_NAMES, STREAMED_HEAD
from featx.context import check_context, context_record, fill_value, single_image_rows, with_context
from featx.errors import FeatxError
from featx.heads import is_ordinal_head, min_images_per_class
from featx.recipe import DECODE_KEYS, Recipe, mismatch
from featx.rows import Rows, class_order, grouped_train_test_split, integer_names, read_fused, smallest_class
from featx.store import FeatureStore, check_compatible

__all__ = [
    "MEMORY_FACTOR",
    "Split",
    "available_memory",
    "check_class_sizes",
    "check_memory",
    "check_test_files",
    "choose_heads",
    "decoding_differences",
    "fits_in_memory",
    "head_list",
    "held_out_label",
    "load_split",
    "memory_needed",
    "min_train_images",
    "more_images_remedy",
    "subject_grouping",
]

# The in-memory heads hold the float32 matrix, its train/test/refit subsets and their searches' copies:
# bench/memory_heads.py measured 999 MB peak for a 98 MB matrix (20,000 x 1,280), so 4x is a floor.
MEMORY_FACTOR = 4


@dataclass
class Split:
    """Training and test rows, ready for the heads."""

    train: Rows
    test: Rows
    class_names: list[str]
    graded: bool
    recipes: list[Recipe]
    test_label: str  # what was tested on, in words
    all_rows: Rows | None  # every labelled row of the training file, when the test rows were held out of it
    train_images_note: str = ""  # how the training images were counted, for messages
    group: str | None = None  # the regex that named the rows' subjects (--group, or the file's), if any
    group_unmatched: str = "refuse"
    context: str | None = None  # --context: each file's features are followed by their context (featx.context)
    context_fill: np.ndarray | None = None  # the context of a row whose subject has no other image

    @classmethod
    def from_arrays(cls, X, y, X_test, y_test, class_names, *, graded: bool | None = None, recipes=(),
                    test_label: str = "the test rows") -> Split:
        """A split of in-memory rows (class indices into `class_names`), each row its own image.

        graded: None = graded when every class name is an integer.
        """
        graded = integer_names(class_names) if graded is None else graded
        return cls(train=Rows.of(X, y, source="the training rows"), test=Rows.of(X_test, y_test, source=test_label),
                   class_names=[str(name) for name in class_names], graded=bool(graded), recipes=list(recipes),
                   test_label=test_label, all_rows=None)

    def blocks(self, indices) -> Split:
        """The same split with only the features (and recipes) of the fused files `indices` (and their context)."""
        columns = list(indices) + ([len(self.train.widths) // 2 + i for i in indices] if self.context else [])
        return dataclasses.replace(
            self, train=self.train.blocks(columns), test=self.test.blocks(columns),
            recipes=[self.recipes[i] for i in indices] if self.recipes else [],
            all_rows=None if self.all_rows is None else self.all_rows.blocks(columns),
        )

    def bundle_record(self) -> dict:
        """How the rows were grouped and given context, for bundles: predict repeats it on new images."""
        return {"group": self.group, "group_unmatched": self.group_unmatched,
                **context_record(self.context, self.context_fill)}

    @property
    def rows_to_save(self) -> Rows:
        """The rows a saved head is refitted on: every labelled row, or the training rows beside a --test file."""
        return self.train if self.all_rows is None else self.all_rows


# ----------------------------------------------------------------------------------------------
# memory


def memory_needed(stores, widening: int = 1) -> int:
    """Bytes the in-memory heads need for the features of `stores` (read from their shapes only), `widening`
    times as wide (--context doubles every row)."""
    return sum(len(store) * store.dim * 4 * MEMORY_FACTOR * widening for store in stores)


def fits_in_memory(stores) -> bool:
    """True when the in-memory heads could hold the features of `stores`."""
    return memory_needed(stores) <= available_memory()


def check_memory(stores, test_stores, widening: int = 1) -> None:
    """Refuse, before their features are read, files the in-memory heads could not hold; say to stream them."""
    need, free = memory_needed([*stores, *test_stores], widening), available_memory()
    if need > free:
        files = " + ".join(str(store.path) for store in stores)
        raise FeatxError(f"{files} need(s) about {need / 2**30:.1f} GiB to train in memory but "
                         f"{free / 2**30:.1f} GiB is available: train the out-of-core head, which streams one file "
                         f"(--heads {STREAMED_HEAD}, one feature file, no --folds)")


def available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


# ----------------------------------------------------------------------------------------------
# loading and splitting


def load_split(files: list[Path], *, test: list[Path] | None, test_size, ordinal, folds, seed, log,
               same_decoding: bool = True, group: str | None = None, group_unmatched: str = "refuse",
               context: str | None = None) -> Split:
    """Read the labelled rows (fused when several files) and split them, or read the test file(s).

    same_decoding: refuse fusing files that feed images differently (a fused bundle could not predict).
    group, group_unmatched: name subjects from the paths (--group), which splits then keep on one side.
    context: "others" puts each row's subject context beside its features (featx.context), in each set alone.
    """
    check_test_files(files, test)
    check_context(context)
    with ExitStack() as stack:
        stores = [stack.enter_context(FeatureStore(f)) for f in files]
        class_names, graded = class_order(stores[0].label_names, ordinal)
        recipes = _fused_recipes(stores, same_decoding)
        test_stores = [] if test is None else [stack.enter_context(FeatureStore(f)) for f in test]
        for store, test_store in zip(stores, test_stores):
            check_compatible([store, test_store])
        check_memory(stores, test_stores, 2 if context else 1)  # the stores hold only the small columns so far
        regex, policy = subject_grouping(stores + test_stores, group, group_unmatched, context)
        data = read_fused(stores, class_names, log, group=group, unmatched=group_unmatched)
        if test is not None:
            held_out = read_fused(test_stores, class_names, log, group=group, unmatched=group_unmatched)
    fill = None
    if context:  # before the hold-out: subjects stay on one side, so each side's context is its own rows'
        fill = fill_value(data)  # the training file's: what the bundle records for predict
        log(f"--context {context}: each row also gets the mean features of its subject's other images; "
            f"{single_image_rows(data)} of {len(data)} rows have none and get the training rows' mean")
        data = with_context(data, value=fill)
        held_out = None if test is None else with_context(held_out, value=fill)
    features = data.source
    present = np.unique(data.y)
    if len(present) < 2:
        raise FeatxError(f"{features} has fewer than 2 labelled classes; a classifier needs at least 2")
    absent = [name for index, name in enumerate(class_names) if index not in present]
    if absent:
        log(f"class(es) {', '.join(absent)} have no labelled rows in {features}; no model will predict them")
    # The least any head needs; each head's own need is checked once the heads are known.
    train_need = min_train_images(folds)
    fewer_folds_help = train_need > min_train_images(None)
    note, all_rows = "", None
    if test is None:
        check_class_sizes(data.y, data.groups, class_names, need=train_need + 1,
                          where=f"in {features} ({train_need} to train, 1 to test)", fewer_folds_help=fewer_folds_help)
        train_rows, test_rows = grouped_train_test_split(data.y, data.groups, test_size=test_size, seed=seed)
        all_rows, data, held_out = data, data.subset(train_rows), data.subset(test_rows)
        test_label = held_out_label(held_out.groups, test_size, seed, subjects=regex is not None)
        note = f" after holding out {test_size:.0%} to test (--test-size)"
    else:
        test_label = held_out.source
    check_class_sizes(data.y, data.groups, class_names, need=train_need, where="to train on",
                      fewer_folds_help=fewer_folds_help)
    held_out = held_out.originals()
    if len(held_out) == 0:
        raise FeatxError(f"no labelled original images to test on in {test_label}; pass a labelled test file")
    return Split(train=data, test=held_out, class_names=class_names, graded=graded, recipes=recipes,
                 test_label=test_label, all_rows=all_rows, train_images_note=note, group=regex,
                 group_unmatched=policy, context=context, context_fill=fill)


def subject_grouping(stores, group: str | None, unmatched: str, context: str | None = None) -> tuple[str | None, str]:
    """The regex (and unmatched policy) that names the rows' subjects: --group, else the files' own record."""
    if group:
        return group, unmatched
    recorded = {(store.group_regex, store.attrs.get("group_unmatched", "refuse")) for store in stores}
    if len(recorded) == 1 and all(store.subjects is not None for store in stores):
        return recorded.pop()
    if context:
        raise FeatxError(f"--context {context} needs subjects, which {stores[0].path} does not record: pass --group "
                         r"REGEX naming each image's subject from its path, e.g. --group '(\d+)[LR]\.'")
    return None, unmatched


def check_test_files(files: list[Path], test: list[Path] | None) -> None:
    if test is not None and len(test) != len(files):
        raise FeatxError(f"{len(files)} training file(s) but {len(test)} test file(s); give one test file per "
                         "training file, in the same order")


def held_out_label(groups, test_size: float, seed: int, *, subjects: bool = False) -> str:
    """How the held-out test rows are named in messages: their images (or subjects), the fraction and the seed."""
    return f"{len(np.unique(groups))} held-out {'subjects' if subjects else 'images'} ({test_size:.0%}, seed {seed})"


def _fused_recipes(stores, same_decoding: bool) -> list[Recipe]:
    """The recipe of each file; with `same_decoding`, fused files must be fed the same way (a fused head's
    prediction decodes each image once for all of them)."""
    recipes = [store.recipe for store in stores]
    if len(stores) > 1 and same_decoding:
        if any(recipe is None for recipe in recipes):
            raise FeatxError("fusing needs feature files that record their recipe; extract them with `featx extract`")
        for index, differences in decoding_differences(recipes):
            raise FeatxError(f"{stores[0].path} and {stores[index].path} feed images differently ({differences}); "
                             "fused files are decoded once per image: extract them in one run (--backbone a,b)")
    return [recipe for recipe in recipes if recipe is not None]


def decoding_differences(recipes: list[Recipe]) -> list[tuple[int, str]]:
    """(index, differences) of every recipe that feeds images differently from the first (DECODE_KEYS)."""
    return [(index, differences) for index, recipe in enumerate(recipes[1:], start=1)
            if (differences := mismatch(recipes[0], recipe, DECODE_KEYS))]


def check_class_sizes(y, groups, class_names, *, need: int, where: str, fewer_folds_help: bool) -> None:
    """Refuse classes with fewer than `need` source images (classes with none are only logged)."""
    index, images = smallest_class(y, groups)
    if images < need:
        raise FeatxError(
            f"class '{class_names[index]}' has only {images} labelled image(s) {where}; "
            f"need at least {need}: {more_images_remedy(fewer_folds_help)}"
        )


def min_train_images(folds) -> int:
    """The fewest images per class any head trains on (with `folds`)."""
    return min(min_images_per_class(name, folds)[0] for name in HEAD_NAMES)


def more_images_remedy(suggest_fewer_folds) -> str:
    return "add labelled images per class" + (" or use fewer --folds" if suggest_fewer_folds else "")


# ----------------------------------------------------------------------------------------------
# choosing the heads


def head_list(heads) -> list[str]:
    """Head names from "a,b" or a list, in order, without repeats (not yet checked)."""
    if isinstance(heads, str):
        heads = heads.split(",")
    return list(dict.fromkeys(name.strip() for name in heads if name.strip()))


def choose_heads(heads, split: Split, *, folds, log) -> list[str]:
    """The heads asked for that the labels suit and the training rows are large enough for."""
    return _trainable_heads(_resolve_heads(heads, split.graded, log), split, folds=folds,
                            skip_unfit=head_list(heads) == ["all"], log=log)


def _resolve_heads(heads, graded: bool, log) -> list[str]:
    names = head_list(heads)
    if names == ["all"]:
        chosen = [name for name in HEAD_NAMES if graded or not is_ordinal_head(name)]
        if len(chosen) < len(HEAD_NAMES):
            skipped = ", ".join(name for name in HEAD_NAMES if name not in chosen)
            log(f"skipping {skipped}: they need graded labels (integer class names, or ordinal=True)")
        return chosen
    if not names:
        raise FeatxError(f"no heads given; choose from {', '.join(HEAD_NAMES)} or all")
    for name in names:
        if name not in HEAD_NAMES:
            raise FeatxError(f"unknown head '{name}'; choose from {', '.join(HEAD_NAMES)} or all")
        if is_ordinal_head(name) and not graded:
            raise FeatxError(
                f"head '{name}' needs graded labels; name the classes by integer grade or pass ordinal=True (--ordinal)"
            )
    return names


def _trainable_heads(names, split: Split, *, folds, skip_unfit: bool, log) -> list[str]:
    """The heads the training rows have enough images per class for, checked before any fitting.

    A head asked for by name that cannot train is an error; with `skip_unfit` (--heads all) it is
    skipped with a note, and only having none left is an error.
    """
    index, images = smallest_class(split.train.y, split.train.groups)
    needs = {name: min_images_per_class(name, folds) for name in names}
    fit = [name for name in names if needs[name][0] <= images]
    unfit = [name for name in names if name not in fit]
    if unfit and (not skip_unfit or not fit):
        name = unfit[0] if not skip_unfit else min(unfit, key=lambda n: needs[n][0])
        need, why = needs[name]
        raise FeatxError(
            f"head '{name}' needs at least {need} images per class to train on ({why}), but class "
            f"'{split.class_names[index]}' has {images}{split.train_images_note}: "
            f"{_smaller_need_remedy(name, need, images, folds, split.graded)}"
        )
    for name in unfit:
        need, why = needs[name]
        log(f"skipping {name}: it needs {need} images per class to train on ({why}); "
            f"class '{split.class_names[index]}' has {images}")
    return fit


def _smaller_need_remedy(name, need, images, folds, graded) -> str:
    remedies = []
    if folds and min_images_per_class(name, None)[0] <= images:
        remedies.append("use fewer --folds (or none)")
    others = [other for other in HEAD_NAMES if other != name and (graded or not is_ordinal_head(other))
              and min_images_per_class(other, folds)[0] <= images]
    if others:
        remedies.append(f"choose another head ({', '.join(others)})")
    remedies.append(f"add labelled images to reach {need} per class")
    return ", or ".join(remedies)
