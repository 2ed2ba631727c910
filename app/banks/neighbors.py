"""Nearest-neighbour search with exact distances, leave-one-out scores and thresholds.

FAISS finds candidate neighbours. Their distances are then recomputed here, one query
at a time in float64, because FAISS computes a batch of queries with BLAS and a single
query without it, and the two round differently. Recomputing makes a query's score
independent of the batch it arrives in. Candidates are ranked by (distance, id) so that
ties break the same way every time.
"""

from __future__ import annotations

import faiss
import numpy as np

from app.errors import InvalidInput

# Extra candidates fetched beyond the neighbours needed, so that near-ties at the k-th
# place that FAISS ordered differently from the exact distances are still ranked exactly.
TIE_MARGIN = 8
QUERY_CHUNK = 256


def prepare_vectors(vectors: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """Validate vectors (N, D) and return them as C-contiguous float32, L2-normalised for cosine.

    Raises InvalidInput for a wrong shape or width, non-finite values or, for cosine, a
    zero vector.
    """
    array = np.asarray(vectors)
    if array.ndim != 2:
        raise InvalidInput(f"expected a batch of vectors (N, {dim}), got an array of shape {array.shape}")
    if array.shape[0] == 0:
        raise InvalidInput("input is empty: send at least one vector")
    if array.shape[1] != dim:
        raise InvalidInput(f"vector width {array.shape[1]} does not match the bank's width {dim}")
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidInput(f"vectors must be numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        raise InvalidInput(f"input[{int(np.argmin(finite))}]: vector contains NaN or infinite values")
    if metric == "cosine":
        norms = np.sqrt((array * array).sum(axis=1))
        if (norms == 0).any():
            raise InvalidInput(f"input[{int(np.argmin(norms))}]: vector has zero length, so it has no cosine distance")
        array = array / norms[:, None]
    return np.ascontiguousarray(array, dtype=np.float32)


def build_flat_index(dim: int, metric: str) -> faiss.IndexIDMap2:
    """Return an empty exact index with int64 ids (inner product for cosine, L2 otherwise)."""
    inner = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    return faiss.IndexIDMap2(inner)


def build_hnsw_index(dim: int, metric: str, m: int, ef_construction: int, ef_search: int) -> faiss.IndexIDMap2:
    """Return an empty HNSW graph index with int64 ids (Malkov and Yashunin, 2016)."""
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    inner = faiss.IndexHNSWFlat(dim, m, faiss_metric)
    inner.hnsw.efConstruction = ef_construction
    inner.hnsw.efSearch = ef_search
    return faiss.IndexIDMap2(inner)


def exact_distances(queries: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """Return distances (Q, C) between queries (Q, D) and their candidates (Q, C, D).

    Cosine distance is 1 - inner product of unit vectors, clipped to [0, 2] against
    rounding. L2 distance is the Euclidean norm of the difference, not its square (FAISS's
    L2 indexes return squared distances, which are never used here).
    """
    queries64 = queries.astype(np.float64)[:, None, :]  # (Q, D) -> (Q, 1, D)
    candidates64 = candidates.astype(np.float64)
    if metric == "cosine":
        return np.clip(1.0 - (candidates64 * queries64).sum(axis=-1), 0.0, 2.0)
    difference = candidates64 - queries64
    return np.sqrt((difference * difference).sum(axis=-1))


def nearest(
    index: faiss.Index,
    queries: np.ndarray,
    count: int,
    metric: str,
    exclude_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Find the ``count`` nearest samples of each query (Q, D), ranked by exact distance.

    ``exclude_ids`` (Q,) names one sample per query that is never its neighbour, which
    is how a bank sample is kept out of its own leave-one-out score even when exact
    duplicates of it exist. Returns distances (Q, count) in float64 and ids (Q, count)
    in int64, padded with inf and -1 where fewer neighbours exist.
    """
    total = len(queries)
    distances = np.full((total, count), np.inf)
    ids = np.full((total, count), -1, dtype=np.int64)
    available = index.ntotal - (1 if exclude_ids is not None else 0)
    if count == 0 or available <= 0:
        return distances, ids

    fetch = min(index.ntotal, count + TIE_MARGIN + (1 if exclude_ids is not None else 0))
    for start in range(0, total, QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, total)
        excluded = None if exclude_ids is None else exclude_ids[start:stop]
        chunk_distances, chunk_ids = _rank_chunk(index, queries[start:stop], fetch, metric, excluded)
        width = min(count, fetch)
        distances[start:stop, :width] = chunk_distances[:, :width]
        ids[start:stop, :width] = chunk_ids[:, :width]
    return distances, ids


def _rank_chunk(
    index: faiss.Index, queries: np.ndarray, fetch: int, metric: str, excluded: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Search ``fetch`` candidates per query and rank them by exact (distance, id)."""
    _, found = index.search(queries, fetch)  # (Q, fetch); -1 where FAISS found fewer
    valid = found >= 0
    if excluded is not None:
        valid &= found != excluded[:, None]
    if not valid.any():
        return np.full(found.shape, np.inf), np.full(found.shape, -1, dtype=np.int64)

    # Gather candidate vectors by id. Invalid slots borrow a valid id and are masked below.
    placeholder = found[valid][0]
    lookup = np.where(valid, found, placeholder)
    vectors = index.reconstruct_batch(lookup.ravel()).reshape(*found.shape, -1)  # (Q * fetch, D) -> (Q, fetch, D)
    distances = np.where(valid, exact_distances(queries, vectors, metric), np.inf)
    ids = np.where(valid, found, -1)

    order = np.lexsort((ids, distances), axis=-1)
    return np.take_along_axis(distances, order, axis=-1), np.take_along_axis(ids, order, axis=-1)


def merge_neighbors(
    distances: np.ndarray, ids: np.ndarray, more_distances: np.ndarray, more_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two neighbour lists per row (N, K) and (N, C), keeping the K best by (distance, id)."""
    width = distances.shape[1]
    all_distances = np.concatenate([distances, more_distances], axis=1)
    all_ids = np.concatenate([ids, more_ids], axis=1)
    order = np.lexsort((all_ids, all_distances), axis=-1)[:, :width]
    return np.take_along_axis(all_distances, order, axis=-1), np.take_along_axis(all_ids, order, axis=-1)


def mean_distances(distances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's mean over its finite distances (N,) and how many there were (N,).

    A row without any finite distance has mean NaN.
    """
    finite = np.isfinite(distances)
    counts = finite.sum(axis=1)
    sums = np.where(finite, distances, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return means, counts


def threshold_from_neighbors(neighbor_distances: np.ndarray, percentile: float) -> float | None:
    """Return the ``percentile`` (linear interpolation) of leave-one-out scores (N, K).

    Each row contains one sample's distances to its nearest other samples. Returns None
    when fewer than two samples have a leave-one-out score.
    """
    means, counts = mean_distances(neighbor_distances)
    scores = means[counts > 0]
    if len(scores) < 2:
        return None
    return float(np.percentile(scores, percentile, method="linear"))
