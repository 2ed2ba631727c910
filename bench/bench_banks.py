"""Anomaly bank speed and recall: the service's bank store against raw FAISS and plain PyTorch.

At each bank size (1k, 10k, 100k and 1M vectors of width 128; seeded clustered data,
L2-normalised, cosine metric, k = 5) one run measures side by side:

- ``faiss-flat`` and ``faiss-hnsw``: bare FAISS indexes (IndexFlatIP, IndexHNSWFlat with
  the service's default M, efConstruction and efSearch), so the store's overhead shows.
- ``store-flat`` and ``store-hnsw``: ``app.banks.FaissBankStore``, the code behind the
  bank routes. Its add computes every sample's exact leave-one-out neighbours and
  writes the bank to disk with fsync. So "add" here is a bulk add of the whole bank in
  one call, followed by a reload (``load_s``). After the score measurements come a few
  incremental adds of 256 samples (one request's worth) to the full bank.
- ``torch-matmul``: one query as ``bank @ query`` and ``topk`` in PyTorch.
- ``torch-loop``: what a naive implementation does, a Python loop of ``torch.dot`` over
  the bank rows per query. It is timed on a few queries within a time budget. A query
  cut off by the budget is extrapolated from the rows it reached (``extrapolated``).

Scores and searches run with ``--faiss-threads`` OpenMP threads (default 1, as the
service), PyTorch with as many intra-op threads. Building indexes and bulk adds use
``--build-threads`` (default: all cores). Recall@5 of the HNSW rows is measured against
the exact top 5 of the flat index. The target: one query against 100k vectors in at most
1 ms with recall@5 of at least 0.95, for the index the service picks at that size.

The flat store is skipped above ``--store-flat-max`` (default 100k) because its bulk add
compares every sample with every other: at 1M that is 10^12 distance computations. Most
of a full run's time goes into building HNSW graphs of 1M vectors, once bare and once
in the store.

    python -m bench.bench_banks            # full: 1k, 10k, 100k, 1M (about 4 GB of memory)
    python -m bench.bench_banks --quick    # 1k and 10k only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from app.banks import BankConfig, FaissBankStore
from app.settings import Settings
from bench.common import write_result
from bench.logs import configure_logging
from bench.plot import LinePanel, Reference, Series, save_figure

logger = logging.getLogger("bench.banks")

DIM = 128
K = 5
CLUSTERS = 1024
CLUSTER_SPREAD = 0.5  # expected norm of a sample's offset from its unit-length cluster centre
SEED = 0
INCREMENTAL_BATCH = 256
BANK = "bench"
TARGET_SIZE = 100_000
TARGET_LATENCY_MS = 1.0
TARGET_RECALL = 0.95
GENERATE_CHUNK = 100_000


# --- data --------------------------------------------------------------------------------


def clustered_vectors(count: int, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return ``count`` unit vectors (count, D) float32 scattered around random ``centers`` (C, D)."""
    dim = centers.shape[1]
    out = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, GENERATE_CHUNK):
        stop = min(start + GENERATE_CHUNK, count)
        assignment = rng.integers(0, len(centers), size=stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) * np.float32(CLUSTER_SPREAD / np.sqrt(dim))
        out[start:stop] = centers[assignment] + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def make_data(max_size: int, queries: int, extra: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return bank vectors (max_size, D), queries (Q, D) and extra samples (E, D) for incremental adds.

    Every bank size uses a prefix of the same bank vectors, so smaller banks are subsets
    of larger ones.
    """
    rng = np.random.default_rng(SEED)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bank = clustered_vectors(max_size, centers, np.random.default_rng(SEED + 1))
    query_vectors = clustered_vectors(queries, centers, np.random.default_rng(SEED + 2))
    extra_vectors = clustered_vectors(extra, centers, np.random.default_rng(SEED + 3))
    return bank, query_vectors, extra_vectors


# --- timing helpers ----------------------------------------------------------------------


def time_each(function: Callable[[int], Any], count: int, max_seconds: float) -> list[float]:
    """Return seconds of ``function(i)`` for i = 0, 1, ..., at most ``count`` calls or ``max_seconds`` (at least one call)."""
    function(0)  # untimed, so that first-call costs stay out of the figures
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < count and (not times or time.perf_counter() < deadline):
        started = time.perf_counter()
        function(len(times))
        times.append(time.perf_counter() - started)
    return times


def timed_once(function: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    return {
        "p50": round(statistics.median(seconds) * 1000, 4),
        "p95": round(float(np.percentile(seconds, 95)) * 1000, 4),
        "queries": len(seconds),
    }


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Return the mean share of each row of ``truth`` (Q, k) that appears in the same row of ``found`` (Q, k)."""
    hits = [len(set(row_found.tolist()) & set(row_truth.tolist())) for row_found, row_truth in zip(found, truth)]
    return round(float(np.mean(hits)) / truth.shape[1], 4)


# --- raw FAISS -----------------------------------------------------------------------------


def bench_raw_index(kind: str, bank: np.ndarray, queries: np.ndarray, truth: np.ndarray | None, args: argparse.Namespace) -> tuple[dict[str, Any], np.ndarray]:
    """Build a bare FAISS index of ``kind`` over ``bank`` and time adds and searches; return the row and its top k."""
    defaults = Settings.model_fields
    if kind == "flat":
        index = faiss.IndexFlatIP(DIM)
    else:
        index = faiss.IndexHNSWFlat(DIM, defaults["bank_hnsw_m"].default, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = defaults["bank_hnsw_ef_construction"].default
        index.hnsw.efSearch = defaults["bank_hnsw_ef_search"].default

    faiss.omp_set_num_threads(args.build_threads)
    add_s, _ = timed_once(lambda: index.add(bank))
    faiss.omp_set_num_threads(args.faiss_threads)
    single = time_each(lambda i: index.search(queries[i : i + 1], K), args.single_queries, args.single_seconds)
    batch_s, (_, found) = timed_once(lambda: index.search(queries, K))

    row = {
        "implementation": f"faiss-{kind}",
        "add_s": round(add_s, 3),
        "add_vectors_per_s": round(len(bank) / add_s, 1),
        "single_query_ms": latency_summary(single),
        "batch_ms_per_query": round(batch_s * 1000 / len(queries), 4),
        "batch_queries": len(queries),
        "recall_at_5": recall_at_k(found, truth) if truth is not None else 1.0,
    }
    del index
    return row, found


# --- the bank store ----------------------------------------------------------------------


def bulk_add(data_dir: Path, bank: np.ndarray, threads: int, options: dict[str, int]) -> float:
    """Create the bank in a store under ``data_dir``, add all of ``bank`` in one call, close the store; return the add's seconds.

    Sample ids are the row numbers as strings, so that neighbours map back to rows.
    """
    builder = FaissBankStore(data_dir, faiss_threads=threads, **options)
    builder.load()
    builder.create(BANK, BankConfig(model=BANK, dim=DIM, k=K, metric="cosine"))
    ids = [str(i) for i in range(len(bank))]
    seconds, _ = timed_once(lambda: builder.add(BANK, bank, ids))
    builder.close()
    return seconds


def bench_store(kind: str, bank: np.ndarray, queries: np.ndarray, extra: np.ndarray, truth: np.ndarray, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Bulk-add ``bank`` to a FaissBankStore bank of ``kind``, reload it, score, check recall and add more."""
    defaults = Settings.model_fields
    data_dir = work_dir / f"store-{kind}-{len(bank)}"
    # a flat bank must never reach the HNSW switch; an HNSW bank switches on its first add
    hnsw_min_size = 1 if kind == "hnsw" else len(bank) + len(extra) + 1
    options = {
        "hnsw_min_size": hnsw_min_size,
        "hnsw_m": defaults["bank_hnsw_m"].default,
        "hnsw_ef_construction": defaults["bank_hnsw_ef_construction"].default,
        "hnsw_ef_search": defaults["bank_hnsw_ef_search"].default,
    }
    try:
        add_s = bulk_add(data_dir, bank, args.build_threads, options)
        store = FaissBankStore(data_dir, faiss_threads=args.faiss_threads, **options)
        load_s, _ = timed_once(store.load)
        if store.info(BANK).index != kind:
            raise RuntimeError(f"store built a {store.info(BANK).index} index, expected {kind}")
        single = time_each(lambda i: store.score(BANK, queries[i : i + 1]), args.single_queries, args.single_seconds)
        batch_s, _ = timed_once(lambda: store.score(BANK, queries))
        results = store.score(BANK, queries, return_neighbors=True)
        found = np.array([[int(neighbor.id) for neighbor in result.neighbors] for result in results])

        incremental = []
        for repeat in range(args.incremental_adds):
            chunk = extra[repeat * INCREMENTAL_BATCH : (repeat + 1) * INCREMENTAL_BATCH]
            seconds, _ = timed_once(lambda: store.add(BANK, chunk))
            incremental.append(seconds)
        store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    return {
        "implementation": f"store-{kind}",
        "add_s": round(add_s, 3),
        "add_vectors_per_s": round(len(bank) / add_s, 1),
        "load_s": round(load_s, 3),
        "single_query_ms": latency_summary(single),
        "batch_ms_per_query": round(batch_s * 1000 / len(queries), 4),
        "batch_queries": len(queries),
        "recall_at_5": recall_at_k(found, truth),
        "incremental_add": {
            "samples_per_add": INCREMENTAL_BATCH,
            "median_s": round(statistics.median(incremental), 4) if incremental else None,
            "samples_per_s": round(INCREMENTAL_BATCH / statistics.median(incremental), 1) if incremental else None,
            "adds": len(incremental),
        },
    }


# --- PyTorch baselines ---------------------------------------------------------------------


def bench_torch_matmul(bank: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Time one query as a matrix-vector product over the whole bank and a top-k."""

    def search(i: int) -> None:
        torch.topk(bank @ queries[i], K)

    single = time_each(search, args.single_queries, args.single_seconds)
    return {"implementation": "torch-matmul", "single_query_ms": latency_summary(single)}


def bench_torch_loop(bank: torch.Tensor, queries: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """Time a Python loop of ``torch.dot`` over the bank rows per query, within ``--loop-seconds``.

    A query that the budget cuts off is extrapolated from the rows it reached.
    """
    deadline = time.perf_counter() + args.loop_seconds
    seconds: list[float] = []
    extrapolated = False
    for query in queries[: args.loop_queries]:
        started = time.perf_counter()
        similarities = []
        for row in bank:
            similarities.append(torch.dot(query, row))
            if len(similarities) % 1024 == 0 and time.perf_counter() > deadline:
                break
        if len(similarities) == len(bank):
            torch.topk(torch.stack(similarities), K)
            seconds.append(time.perf_counter() - started)
        else:
            seconds.append((time.perf_counter() - started) * len(bank) / len(similarities))
            extrapolated = True
        if time.perf_counter() > deadline:
            break
    return {"implementation": "torch-loop", "single_query_ms": latency_summary(seconds), "extrapolated": extrapolated}


# --- one size ------------------------------------------------------------------------------


def bench_size(size: int, bank_all: np.ndarray, queries: np.ndarray, extra: np.ndarray, args: argparse.Namespace, work_dir: Path) -> list[dict[str, Any]]:
    """Measure every implementation at one bank size; return one row each."""
    bank = bank_all[:size]
    logger.info("size %d: raw FAISS", size)
    flat_row, truth = bench_raw_index("flat", bank, queries, None, args)
    hnsw_row, _ = bench_raw_index("hnsw", bank, queries, truth, args)
    rows = [flat_row, hnsw_row]

    for kind in ("flat", "hnsw"):
        if kind == "flat" and size > args.store_flat_max:
            reason = f"a flat bank's bulk add compares all {size} samples pairwise; above --store-flat-max {args.store_flat_max}"
            rows.append({"implementation": "store-flat", "skipped": reason})
            continue
        logger.info("size %d: store, %s", size, kind)
        rows.append(bench_store(kind, bank, queries, extra, truth, args, work_dir))

    torch.set_num_threads(args.faiss_threads)
    bank_tensor, query_tensor = torch.from_numpy(bank), torch.from_numpy(queries)
    rows.append(bench_torch_matmul(bank_tensor, query_tensor, args))
    rows.append(bench_torch_loop(bank_tensor, query_tensor, args))

    for row in rows:
        row["size"] = size
        if "single_query_ms" in row:
            logger.info(
                "size %d %-13s single query p50 %.4f ms%s", size, row["implementation"], row["single_query_ms"]["p50"],
                f", recall@5 {row['recall_at_5']}" if "recall_at_5" in row else "",
            )
    return rows


# --- targets and plot ----------------------------------------------------------------------


def evaluate_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Check one query at 100k vectors in at most 1 ms with recall@5 >= 0.95, for the index the service would use."""
    service_kind = "hnsw" if TARGET_SIZE >= Settings.model_fields["bank_hnsw_min_size"].default else "flat"
    checks = {}
    for implementation in (f"store-{service_kind}", "store-hnsw", "faiss-hnsw"):
        row = next((r for r in rows if r["size"] == TARGET_SIZE and r["implementation"] == implementation and "single_query_ms" in r), None)
        if row is None:
            continue
        latency, recall = row["single_query_ms"]["p50"], row["recall_at_5"]
        checks[implementation] = {
            "single_query_p50_ms": latency,
            "recall_at_5": recall,
            "met": latency <= TARGET_LATENCY_MS and recall >= TARGET_RECALL,
        }
    if not checks:
        return {"measured": False, "reason": f"no bank of {TARGET_SIZE} vectors in this run"}
    return {
        "measured": True,
        "target": f"p50 <= {TARGET_LATENCY_MS} ms and recall@5 >= {TARGET_RECALL} at {TARGET_SIZE} vectors",
        "service_index_at_size": service_kind,
        "checks": checks,
    }


def plot_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Draw single-query latency, bulk add rate and recall against bank size."""
    implementations = list(dict.fromkeys(row["implementation"] for row in rows))
    sizes = sorted({row["size"] for row in rows})

    def series(value: Callable[[dict[str, Any]], float | None], names: list[str]) -> list[Series]:
        out = []
        for name in names:
            points = [(row["size"], value(row)) for row in rows if row["implementation"] == name and value(row) is not None]
            if points:
                out.append(Series(name, points, dashed=name.startswith("torch")))
        return out

    latency = LinePanel(
        "one query: median latency", "bank size (vectors)", "latency (ms)",
        series(lambda row: row.get("single_query_ms", {}).get("p50"), implementations),
        log_x=True, log_y=True, x_ticks=sizes, references=[Reference(TARGET_LATENCY_MS, "target at 100k: 1 ms")],
    )
    adds = LinePanel(
        "bulk add", "bank size (vectors)", "vectors/s",
        series(lambda row: row.get("add_vectors_per_s"), implementations), log_x=True, log_y=True, x_ticks=sizes,
    )
    recall = LinePanel(
        "HNSW recall@5 against exact search", "bank size (vectors)", "recall@5",
        series(lambda row: row.get("recall_at_5"), ["faiss-hnsw", "store-hnsw"]),
        log_x=True, x_ticks=sizes, references=[Reference(TARGET_RECALL, "target 0.95")],
    )
    return save_figure(path, [latency, adds, recall], columns=3)


# --- command line ------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 1k and 10k only, fewer queries")
    parser.add_argument("--sizes", type=int, nargs="+", help="bank sizes (default: 1000 10000 100000 1000000, --quick: 1000 10000)")
    parser.add_argument("--queries", type=int, help="queries per batched search and for recall (default: 1000, --quick: 200)")
    parser.add_argument("--single-queries", type=int, help="maximum one-query calls per implementation (default: 1000, --quick: 200)")
    parser.add_argument("--single-seconds", type=float, help="maximum seconds of one-query calls per implementation (default: 5, --quick: 0.5)")
    parser.add_argument("--loop-queries", type=int, default=3, help="queries of the naive PyTorch loop")
    parser.add_argument("--loop-seconds", type=float, help="time budget of the naive PyTorch loop per size (default: 10, --quick: 1)")
    parser.add_argument("--incremental-adds", type=int, help="adds of 256 samples to each full store bank (default: 3, --quick: 1)")
    parser.add_argument("--store-flat-max", type=int, default=100_000, help="largest size measured with a flat store bank")
    parser.add_argument("--faiss-threads", type=int, default=1, help="OpenMP threads for searches and scores (the service's default is 1)")
    parser.add_argument("--build-threads", type=int, default=len(os.sched_getaffinity(0)), help="OpenMP threads for index builds and bulk adds")
    parser.add_argument("--work-dir", type=Path, help="folder for the store's bank files (default: a temporary folder)")
    args = parser.parse_args()

    defaults = {
        "sizes": ([1_000, 10_000, 100_000, 1_000_000], [1_000, 10_000]),
        "queries": (1000, 200),
        "single_queries": (1000, 200),
        "single_seconds": (5.0, 0.5),
        "loop_seconds": (10.0, 1.0),
        "incremental_adds": (3, 1),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("queries", "single_queries", "single_seconds", "loop_queries", "loop_seconds", "faiss_threads", "build_threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.incremental_adds < 0:
        parser.error(f"--incremental-adds must not be negative, got {args.incremental_adds}")
    if min(args.sizes) <= K:
        parser.error(f"--sizes must be above k = {K}, got {args.sizes}")
    return args


def main() -> None:
    args = parse_args()
    configure_logging()
    logger.info("generating %d clustered vectors of width %d", max(args.sizes), DIM)
    bank, queries, extra = make_data(max(args.sizes), args.queries, max(1, args.incremental_adds) * INCREMENTAL_BATCH)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-banks-", dir=args.work_dir) as temporary:
        for size in sorted(args.sizes):
            rows.extend(bench_size(size, bank, queries, extra, args, Path(temporary)))

    defaults = Settings.model_fields
    record = {
        "command": " ".join(["python -m bench.bench_banks", *sys.argv[1:]]),
        "data": f"{CLUSTERS} clusters, offsets of norm ~{CLUSTER_SPREAD}, unit vectors of width {DIM}, seed {SEED}; cosine metric, k={K}",
        "faiss_compile_options": faiss.get_compile_options(),
        "threads": {"faiss_search": args.faiss_threads, "build": args.build_threads, "torch": args.faiss_threads},
        "hnsw": {name: defaults[f"bank_hnsw_{name}"].default for name in ("m", "ef_construction", "ef_search", "min_size")},
        "target": evaluate_target(rows),
        "rows": rows,
    }
    path = write_result("banks-quick" if args.quick else "banks", record)
    plot = plot_rows(path.with_suffix(".png"), rows)
    print(json.dumps({"target": record["target"], "record": str(path), "plot": str(plot)}, indent=2))


if __name__ == "__main__":
    main()
