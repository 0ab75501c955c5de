"""`featx audit`: near-duplicates, subjects that span splits, and outliers in one or more feature files.

Similarity is the cosine of features standardised over the audited rows (each feature's mean
removed, divided by its spread). Raw pooled features share a large common part, which makes unrelated
photos look alike; merely centred ones still let a few strong features dominate: on the shared knee
X-rays (6,604 rows) centred cosine put 21,220 pairs above 0.65, standardised cosine 94. Rows stream from the
files in chunks, so a file larger than memory is audited with a bounded footprint (see audit_index).
Augmented copies (aug > 0) are left out: they are near-duplicates of their own image by construction.
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featx import audit_index
from featx.atomic import atomic_output, writable_folder
from featx.errors import FeatxError
from featx.store import FeatureStore, check_compatible

# Standardised cosine at or above which two rows are near-duplicates. On hymenoptera with 120 copies
# resized to 50-80%, cropped up to 10% and re-saved at JPEG quality 60-90 (bench/audit.py photos),
# default-recipe features found them across splits with recall 0.992 and precision 0.992 at 0.6; both
# stay >= 0.95 from 0.55 to 0.675.
DUPLICATE_THRESHOLD = 0.6
NEIGHBORS = 10  # nearest rows looked at per row; a picture saved more often than this shows as a chain
EXACT_ROWS = 20_000  # up to this many rows the search is exact on the full features
REDUCED_DIM = 128
# The reduced search keeps candidates this far below the threshold; their exact cosine then decides.
CANDIDATE_MARGIN = 0.1
# Modified z-score (0.6745 (d - median) / MAD, Iglewicz and Hoaglin) of a row's distance to its class
# centroid, or to the nearest centroid, above which the row is called an outlier.
OUTLIER_Z = 3.5
CHUNK_ROWS = 8192
RERANK_ROWS = 50_000  # full rows held at once to re-score candidates: 50,000 x 1,280 float32 is 0.25 GB


@dataclass
class AuditResult:
    """What `audit` found and where it wrote it."""

    output: Path
    rows: int
    duplicates: int
    across_splits: int
    subjects_across: int
    outliers: int
    files: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        return (f"audited {self.rows} rows: {self.duplicates} near-duplicate pairs ({self.across_splits} across "
                f"splits), {self.subjects_across} subjects in several splits, {self.outliers} outliers; "
                f"details in {self.output}/")


class _Rows:
    """The audited rows of several feature files, numbered 0..N-1 across files."""

    def __init__(self, stores: list[FeatureStore]):
        self.stores = stores
        self.splits = _split_names(stores)
        names: dict[str, int] = {}
        files, local, labels, self.paths, self.subjects = [], [], [], [], []
        for i, store in enumerate(stores):
            keep = np.flatnonzero(store.aug == 0) if store.aug is not None else np.arange(len(store))
            # Seeds-style files may hold labels without names: a label is then named by its number.
            named = list(store.label_names) or [str(k) for k in range(int(store.labels.max(initial=-1)) + 1)]
            mapping = np.array([names.setdefault(n, len(names)) for n in named] + [-1], dtype=np.int64)
            files.append(np.full(len(keep), i, dtype=np.int32))
            local.append(keep)
            labels.append(mapping[np.where(store.labels[keep] >= 0, store.labels[keep], -1)])
            self.paths += [store.paths[j] for j in keep]
            # Until a file records subjects (--group), a path's stem is its subject: one picture name in two splits.
            subjects = store.subjects or [Path(p).stem if p else None for p in store.paths]
            self.subjects += [subjects[j] for j in keep]
        self.file = np.concatenate(files)
        self.local = np.concatenate(local)
        self.labels = np.concatenate(labels)
        self.label_names = list(names)
        self.dim = stores[0].dim

    def __len__(self) -> int:
        return len(self.file)

    def blocks(self, chunk_rows: int = CHUNK_ROWS, wanted: np.ndarray | None = None):
        """Yield (first row number, float32 rows) in order; with `wanted`, only blocks holding one of those rows."""
        start = 0
        for i, store in enumerate(self.stores):
            keep = self.local[self.file == i]
            for a in range(0, len(keep), chunk_rows):
                part = keep[a:a + chunk_rows]
                n = len(part)
                if wanted is None or _any_between(wanted, start, start + n):
                    block = store.features[int(part[0]):int(part[-1]) + 1]
                    yield start, np.asarray(block[part - part[0]], dtype=np.float32)
                start += n

    def describe(self, i: int) -> dict:
        file = int(self.file[i])
        label = int(self.labels[i])
        return {"file": self.stores[file].path, "split": self.splits[file], "row": int(self.local[i]),
                "path": self.paths[i], "label": self.label_names[label] if label >= 0 else ""}


def _any_between(sorted_ids: np.ndarray, start: int, stop: int) -> bool:
    at = np.searchsorted(sorted_ids, start)
    return bool(at < len(sorted_ids) and sorted_ids[at] < stop)


def _split_names(stores: list[FeatureStore]) -> list[str]:
    names = [str(store.attrs.get("split") or Path(store.path).stem) for store in stores]
    return [name if names.count(name) == 1 else f"{name}:{Path(s.path).stem}" for name, s in zip(names, stores)]


def audit(files, output="audit", *, threshold: float = DUPLICATE_THRESHOLD, neighbors: int = NEIGHBORS,
          outlier_z: float = OUTLIER_Z, exact_rows: int = EXACT_ROWS, chunk_rows: int = CHUNK_ROWS,
          page: bool = True) -> AuditResult:
    """Find near-duplicates, subjects in several splits and outliers in feature `files`; write CSVs to `output`.

    threshold: standardised cosine from which two rows are near-duplicates. exact_rows: up to this many rows the
    search is exact; above, it runs on PCA-reduced rows and re-scores its candidates exactly.
    """
    paths = [Path(f) for f in ([files] if isinstance(files, (str, Path)) else files)]
    if not paths:
        raise FeatxError("featx audit needs at least one feature file")
    if not 0 < threshold <= 1:
        raise FeatxError(f"--threshold must be in (0, 1]; got {threshold}")
    folder = writable_folder(output)
    stores = [FeatureStore(p) for p in paths]
    try:
        check_compatible(stores)
        rows = _Rows(stores)
        if len(rows) < 2:
            raise FeatxError(f"{', '.join(map(str, paths))} hold fewer than 2 rows: nothing to compare")
        pairs, centroid_sims = _neighbours(rows, threshold, neighbors, exact_rows, chunk_rows)
        outliers = _outliers(rows, centroid_sims, outlier_z)
        spanning = _subjects_across(rows)
        result = _write(folder, rows, pairs, spanning, outliers)
        if page:
            from featx.audit_page import write_audit_page

            result.files["page"] = write_audit_page(folder / "audit.html", rows, pairs, outliers, str(result))
    finally:
        for store in stores:
            store.close()
    return result


def _neighbours(rows: _Rows, threshold, neighbors, exact_rows, chunk_rows):
    """Near-duplicate pairs (i, j, cosine) with i < j, and each row's cosine to every class centroid."""
    standardise = _standardiser(rows, chunk_rows)
    exact = len(rows) <= exact_rows
    if exact:
        index = audit_index.flat_index(audit_index.unit_rows(np.concatenate(
            [standardise(block) for _, block in rows.blocks(chunk_rows)])))
    else:
        sample = audit_index.unit_rows(standardise(_sample(rows, chunk_rows)))
        axes = audit_index.principal_axes(sample, min(REDUCED_DIM, *sample.shape))
        index = audit_index.ivf_index(audit_index.unit_rows(sample @ axes.T), len(rows))
        for _, block in rows.blocks(chunk_rows):
            index.add(audit_index.unit_rows(audit_index.unit_rows(standardise(block)) @ axes.T))
    centroids = _centroids(rows, index, chunk_rows)
    floor = threshold if exact else threshold - CANDIDATE_MARGIN
    found, found_sims = [], []
    centroid_sims = np.empty((len(rows), len(centroids)), dtype=np.float32)
    for start in range(0, len(rows), chunk_rows):
        stop = min(start + chunk_rows, len(rows))
        queries = index.reconstruct_n(start, stop - start)
        centroid_sims[start:stop] = queries @ centroids.T
        sims, ids = audit_index.search(index, queries, neighbors + 1)
        me = np.broadcast_to(np.arange(start, stop)[:, None], ids.shape)
        keep = (sims >= floor) & (ids >= 0) & (ids != me)
        found.append(np.stack([np.minimum(me[keep], ids[keep]), np.maximum(me[keep], ids[keep])], axis=1))
        found_sims.append(sims[keep])
    pairs, first = np.unique(np.concatenate(found), axis=0, return_index=True)
    sims = np.concatenate(found_sims)[first]
    if not exact and len(pairs):
        sims = _exact_cosines(rows, pairs, standardise, chunk_rows)
    keep = (sims >= threshold) & ~_same_image(rows, pairs)
    pairs, sims = pairs[keep], sims[keep]
    order = np.argsort(-sims, kind="stable")
    return [(int(i), int(j), float(s)) for (i, j), s in zip(pairs[order], sims[order])], centroid_sims


def _standardiser(rows: _Rows, chunk_rows):
    """A function that standardises rows by the mean and spread of every audited row (one streamed pass)."""
    total = np.zeros(rows.dim)
    squares = np.zeros(rows.dim)
    for _, block in rows.blocks(chunk_rows):
        total += block.sum(axis=0, dtype=np.float64)
        squares += np.square(block, dtype=np.float64).sum(axis=0)
    mean = total / len(rows)
    spread = np.sqrt(np.maximum(squares / len(rows) - mean**2, 0))
    # A feature constant over every row carries nothing; dividing by ~0 would make it noise.
    scale = np.where(spread > 1e-6, 1 / np.maximum(spread, 1e-6), 0)
    mean, scale = mean.astype(np.float32), scale.astype(np.float32)
    return lambda block: (block - mean) * scale


def _sample(rows: _Rows, chunk_rows):
    """About IVF_TRAIN_ROWS rows in a few contiguous runs spread over all rows: cheap to read, fair to fit."""
    runs = max(1, min(20, len(rows) // chunk_rows))
    per_run = max(1, audit_index.IVF_TRAIN_ROWS // runs)
    picked = np.unique(np.linspace(0, len(rows) - 1, runs).astype(np.int64))
    return np.concatenate([block[:per_run] for _, block in rows.blocks(chunk_rows, wanted=picked)])


def _centroids(rows: _Rows, index, chunk_rows) -> np.ndarray:
    """Unit centroid of each class in the index's space (empty when no row is labelled)."""
    sums = np.zeros((len(rows.label_names), index.d), dtype=np.float64)
    for start in range(0, len(rows), chunk_rows):
        labels = rows.labels[start:start + chunk_rows]
        labelled = labels >= 0
        if labelled.any():
            block = index.reconstruct_n(start, len(labels))
            np.add.at(sums, labels[labelled], block[labelled])
    present = np.bincount(rows.labels[rows.labels >= 0], minlength=len(sums)) > 0
    return audit_index.unit_rows(np.where(present[:, None], sums, 0))


def _exact_cosines(rows: _Rows, pairs: np.ndarray, standardise, chunk_rows) -> np.ndarray:
    """Standardised cosine of each pair on the full features, reading only the blocks that hold a paired row.

    Pairs go in batches that name at most RERANK_ROWS rows, so memory stays bounded however many
    candidates the reduced search kept (a batch costs one more pass over the blocks it needs).
    """
    sims = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), RERANK_ROWS // 2):
        stop = min(start + RERANK_ROWS // 2, len(pairs))
        batch = pairs[start:stop]
        wanted = np.unique(batch)
        full = np.empty((len(wanted), rows.dim), dtype=np.float32)
        for first, block in rows.blocks(chunk_rows, wanted=wanted):
            lo, hi = np.searchsorted(wanted, [first, first + len(block)])
            full[lo:hi] = audit_index.unit_rows(standardise(block[wanted[lo:hi] - first]))
        a, b = np.searchsorted(wanted, batch[:, 0]), np.searchsorted(wanted, batch[:, 1])
        sims[start:stop] = np.einsum("ij,ij->i", full[a], full[b])
    return sims


def _same_image(rows: _Rows, pairs: np.ndarray) -> np.ndarray:
    """Pairs that are one image listed twice in one file (test-time copies), not duplicates to report."""
    return np.array([rows.file[i] == rows.file[j] and rows.paths[i] != "" and rows.paths[i] == rows.paths[j]
                     for i, j in pairs], dtype=bool)


def _robust_z(distances: np.ndarray) -> np.ndarray:
    median = np.median(distances)
    mad = np.median(np.abs(distances - median))
    return 0.6745 * (distances - median) / max(float(mad), 1e-9)


def _outliers(rows: _Rows, centroid_sims: np.ndarray, limit: float) -> list[dict]:
    """Rows far from every class centroid, or far from their own class's: (row, reason, distance, z)."""
    if centroid_sims.shape[1] == 0:
        return []
    nearest = centroid_sims.argmax(axis=1)
    to_nearest = 1 - centroid_sims[np.arange(len(rows)), nearest]
    found = {}
    for i in np.flatnonzero(_robust_z(to_nearest) > limit):
        found[int(i)] = ("far from every class", float(to_nearest[i]), rows.label_names[nearest[i]])
    for label in np.unique(rows.labels[rows.labels >= 0]):
        members = np.flatnonzero(rows.labels == label)
        if len(members) < 5:
            continue  # no spread to measure against
        to_own = 1 - centroid_sims[members, label]
        for i in members[_robust_z(to_own) > limit]:
            found.setdefault(int(i), ("far from its class", float(1 - centroid_sims[i, label]),
                                      rows.label_names[nearest[i]]))
    ordered = sorted(found.items(), key=lambda item: -item[1][1])
    return [{"row": i, "reason": r, "distance": d, "nearest_class": c} for i, (r, d, c) in ordered]


def _subjects_across(rows: _Rows) -> list[tuple[str, list[str], list[int]]]:
    """(subject, splits, rows) of every subject whose rows lie in more than one split."""
    if len(set(rows.splits)) < 2:
        return []
    members: dict[str, list[int]] = {}
    for i in range(len(rows)):
        subject = rows.subjects[i]
        if subject is not None:
            members.setdefault(subject, []).append(i)
    spanning = []
    for subject, ids in members.items():
        splits = sorted({rows.splits[rows.file[i]] for i in ids})
        if len(splits) > 1:
            spanning.append((subject, splits, ids))
    return spanning


def _write(folder: Path, rows: _Rows, pairs, spanning, outliers) -> AuditResult:
    files = {name: folder / f"{name}.csv" for name in ("duplicates", "subjects", "outliers")}
    across = 0
    with _csv(files["duplicates"]) as out:
        out.writerow(["similarity", "across_splits", "same_label"]
                     + [f"{key}_{side}" for side in "ab" for key in ("split", "path", "label", "file", "row")])
        for i, j, sim in pairs:
            a, b = rows.describe(i), rows.describe(j)
            across += a["split"] != b["split"]
            out.writerow([f"{sim:.4f}", int(a["split"] != b["split"]), int(a["label"] == b["label"])]
                         + [d[key] for d in (a, b) for key in ("split", "path", "label", "file", "row")])
    with _csv(files["subjects"]) as out:
        out.writerow(["subject", "splits", "rows", "paths"])
        for subject, splits, ids in spanning:
            out.writerow([subject, ";".join(splits), len(ids), ";".join(rows.paths[i] for i in ids[:10])])
    with _csv(files["outliers"]) as out:
        out.writerow(["reason", "distance", "nearest_class", "split", "path", "label", "file", "row"])
        for found in outliers:
            d = rows.describe(found["row"])
            out.writerow([found["reason"], f"{found['distance']:.4f}", found["nearest_class"]]
                         + [d[key] for key in ("split", "path", "label", "file", "row")])
    result = AuditResult(folder, len(rows), len(pairs), across, len(spanning), len(outliers), files)
    files["summary"] = folder / "summary.txt"
    with atomic_output(files["summary"]) as tmp:
        tmp.write_text(f"{result}\nfiles: {', '.join(s.path for s in rows.stores)}\n")
    return result


@contextmanager
def _csv(path: Path):
    """A CSV writer on a file that appears whole (written to a temporary name, then renamed)."""
    with atomic_output(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        yield csv.writer(f)
