"""Cosine neighbours with faiss: the index that `featx audit` and the kNN head search.

Rows are unit vectors, so inner product is cosine similarity. Small sets are searched exactly
(IndexFlatIP, queried in chunks). Large ones are reduced by PCA and searched with an inverted file
(IndexIVFFlat), which is built chunk by chunk and keeps memory bounded; the audit re-scores its
candidates exactly. Measured against hnswlib in bench/audit.py (`index`, 100,000 rows, load 13-18 on 2 cores):
faiss IVF (16 probes) 79 s, hnswlib (M 16, ef 64) 110 s, exact 716 s; recall of pairs >= 0.5: 0.83, 0.98, 1.
faiss is kept: one library gives the exact search for small sets and the chunked IVF, and 32 probes close the gap.
"""

from __future__ import annotations

import numpy as np

from featx.cores import usable_cores

# faiss's inverted lists: about 2 sqrt(N) cells, each query visits IVF_PROBES of them. On bench/audit.py's
# 100,000 rows (128 reduced dims) 16 probes found 0.973 of the pairs exact search puts at cosine >= 0.6
# (13.7 s), 32 found 0.997 (36.5 s), 64 all (64 s); the exact search took 118 s.
IVF_PROBES = 32
IVF_CELLS_PER_ROOT = 2
IVF_ITERATIONS = 10
IVF_TRAIN_ROWS = 50_000


def faiss():
    import faiss as _faiss

    _faiss.omp_set_num_threads(usable_cores())
    return _faiss


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 as float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def flat_index(rows: np.ndarray):
    """An exact inner-product index holding `rows` (unit float32 rows)."""
    index = faiss().IndexFlatIP(rows.shape[1])
    index.add(np.ascontiguousarray(rows, dtype=np.float32))
    return index


def ivf_index(train_rows: np.ndarray, n_rows: int):
    """An empty inverted-file index for about `n_rows` rows, its cells trained on `train_rows`."""
    f = faiss()
    dim = train_rows.shape[1]
    # faiss wants 39 training rows per cell (it warns below that) and samples down to 256 per cell itself.
    cells = int(min(max(16, IVF_CELLS_PER_ROOT * np.sqrt(n_rows)), max(16, len(train_rows) // 39)))
    index = f.IndexIVFFlat(f.IndexFlatIP(dim), dim, cells, f.METRIC_INNER_PRODUCT)
    # k-means on 100,000 rows' sample took as long as the search itself at faiss's 25 iterations; cells
    # only need to be roughly right, as a query visits IVF_PROBES of them.
    index.cp.niter = IVF_ITERATIONS
    index.train(np.ascontiguousarray(train_rows[::max(1, len(train_rows) // (64 * cells))], dtype=np.float32))
    index.nprobe = min(IVF_PROBES, cells)
    # Rows come back by number (reconstruct_n) to be queried, so the caller keeps no copy of them.
    index.make_direct_map()
    return index


def search(index, queries: np.ndarray, k: int, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, neighbour numbers) of the `k` nearest rows of each query, best first; -1 when fewer."""
    k = int(min(k, index.ntotal))
    sims = np.empty((len(queries), k), dtype=np.float32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk_rows):
        part = np.ascontiguousarray(queries[start:start + chunk_rows], dtype=np.float32)
        sims[start:start + len(part)], ids[start:start + len(part)] = index.search(part, k)
    return sims, ids


def principal_axes(sample: np.ndarray, dim: int) -> np.ndarray:
    """The `dim` leading principal axes (rows) of `sample`, which is already centred.

    From the D x D scatter matrix, not an SVD of the sample: an SVD's N x D factor and workspace
    made a 50,000-row sample cost about 1 GiB.
    """
    sample = np.asarray(sample, dtype=np.float32)
    values, vectors = np.linalg.eigh((sample.T @ sample).astype(np.float64))
    return vectors[:, np.argsort(values)[::-1][:dim]].T.astype(np.float32)
