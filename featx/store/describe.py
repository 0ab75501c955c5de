"""`featx info`: a readable summary of a feature file, or of an extraction still in progress."""

from __future__ import annotations

import os

import numpy as np

from featx.recipe import Recipe
from featx.store._durable import list_shards, parts_dir
from featx.store._files import WRITER_ATTRS, open_shard, rows_in_shards
from featx.store.reader import FeatureStore
from featx.store.subjects import subject_counts


def describe(path, max_skipped: int = 5) -> str:
    """A readable summary of a feature file (or of an unfinished extraction) for ``featx info``."""
    path = os.fspath(path)
    shards = list_shards(parts_dir(path))
    if not os.path.exists(path) and shards:
        return _describe_in_progress(path, shards, max_skipped)
    with FeatureStore(path) as store:
        lines = _describe_store(store, max_skipped)
        pending = rows_in_shards(shards, store.attrs.get("parts_generation"))
    if pending:
        lines.append(f"in progress: {pending} more rows waiting in {parts_dir(path)} "
                     "(rerun the same `featx extract` command to add them)")
    return "\n".join(lines)


def _describe_store(store: FeatureStore, max_skipped: int) -> list[str]:
    fmt = store.attrs.get("format", "seeds-style HDF5 (no format attribute)")
    state = "complete" if store.complete else "INCOMPLETE (rerun the same `featx extract` command to finish it)"
    lines = [
        f"{store.path}: {fmt}, {state}",
        f"rows: {len(store)}",
        f"feature dim: {store.dim} ({store.dtype}, dataset {store.data_key!r})",
    ]
    lines += _class_lines(store.labels, store.label_names)
    if store.subjects is not None:
        lines.append(f"{subject_counts(store.subjects)}, named by --group '{store.group_regex}'")
    if store.aug is not None:
        lines.append(f"augmented copies: {int(np.count_nonzero(store.aug))} "
                     f"of {len(store)} rows (max aug index {int(store.aug.max(initial=0))})")
    lines += _attr_lines(store.attrs)
    lines += _skipped_lines(store.skipped, max_skipped)
    return lines


def _describe_in_progress(path: str, shards, max_skipped: int) -> str:
    rows, labels, skipped, attrs, names = 0, [], [], {}, []
    for _, shard_path in shards:
        h5file, shard = open_shard(shard_path)
        with h5file:
            rows += len(shard)
            labels.append(shard.labels())
            skipped += shard.skipped()
            attrs = shard.attrs
            names = shard.label_names() or names
            dim, dtype = shard.dim, shard.features.dtype
    lines = [
        f"{path}: INCOMPLETE extraction in progress ({len(shards)} shards in {parts_dir(path)}); "
        "rerun the same `featx extract` command to finish it",
        f"rows so far: {rows}",
        f"feature dim: {dim} ({dtype})",
    ]
    lines += _class_lines(np.concatenate(labels), names)
    lines += _attr_lines(attrs)
    lines += _skipped_lines(skipped, max_skipped)
    return "\n".join(lines)


def _class_lines(labels: np.ndarray, label_names: list[str]) -> list[str]:
    labeled = labels[labels >= 0]
    counts = np.bincount(labeled, minlength=len(label_names)) if labeled.size else \
        np.zeros(len(label_names), dtype=np.int64)
    lines = [f"classes: {len(counts)}"]
    width = max((len(n) for n in label_names), default=1)
    for index, count in enumerate(counts):
        name = label_names[index] if index < len(label_names) else f"(class {index}, no name)"
        lines.append(f"  {name:<{width}}  {int(count)}")
    unlabeled = int(np.count_nonzero(labels < 0))
    if unlabeled:
        lines.append(f"  {'(unlabeled)':<{width}}  {unlabeled}")
    return lines


def _attr_lines(attrs: dict) -> list[str]:
    recipe = Recipe.from_attrs(attrs)
    lines = []
    if recipe is not None:
        shown = recipe.to_attrs()
        shown["weights"] = recipe.weights
        for key in ("backbone", "weights", "image_size", "preprocessing", "pooling", "layer", "resize", "tta", "decode",
                    "augment", "seed", "precision"):
            value = shown[key]
            # An empty layer / tta means "none": say so instead of printing a blank value.
            lines.append(f"{key.replace('_', ' ')}: {value if value != '' else 'none'}")
    hidden = {*Recipe.__dataclass_fields__, "weights_id"} | (WRITER_ATTRS - {"created", "featx_version"})
    lines += [f"{key}: {attrs[key]}" for key in sorted(attrs) if key not in hidden]
    return lines


def _skipped_lines(skipped: list[tuple[str, str]], max_skipped: int) -> list[str]:
    lines = [f"skipped files: {len(skipped)}"]
    lines += [f"  {p}: {r}" for p, r in skipped[:max_skipped]]
    if len(skipped) > max_skipped:
        lines.append(f"  ... and {len(skipped) - max_skipped} more")
    return lines
