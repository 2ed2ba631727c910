"""Anomaly banks kept in local FAISS indexes, persisted under ``<data_dir>/banks/<name>/``.

Each bank keeps an immutable snapshot: the index, the sample ids and every sample's
leave-one-out neighbours. An add builds the next snapshot from a copy of the index while
scores keep reading the current one, saves it (see ``app.banks.storage``), and only then
swaps it in under the bank's write lock. So a failed add changes nothing, and scores wait
only for the swap. Adds to one bank are serialised by a per-bank mutex.

Sample ids are strings. Inside FAISS the i-th sample added has the int64 id i, so
position in ``ids`` and FAISS id agree (samples are never removed one by one).

One process owns a data folder: ``load`` takes an exclusive lock on
``<data_dir>/banks.lock``, so a second service (a replica sharing the volume) fails at
start-up instead of overwriting the first one's files.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from app.banks.base import (
    MAX_SAMPLE_ID_LENGTH,
    AddResult,
    BankConfig,
    BankInfo,
    BankStore,
    BankUnavailable,
    Neighbor,
    ScoreResult,
    validate_bank_name,
)
from app.banks.neighbors import (
    TIE_MARGIN,
    build_flat_index,
    build_hnsw_index,
    mean_distances,
    merge_neighbors,
    nearest,
    prepare_vectors,
    threshold_from_neighbors,
)
from app.banks.rwlock import ReadWriteLock
from app.banks.storage import (
    FORMAT_VERSION,
    BankFileError,
    BankFiles,
    BankMeta,
    fsync_dir,
    index_file_name,
    load_bank,
    neighbors_file_name,
    save_bank,
)
from app.errors import Conflict, InvalidInput, NotFound

logger = logging.getLogger(__name__)

# Folder names with this character are never bank names: they mark folders being
# created or deleted, which start-up removes after a crash.
_TRANSIENT_MARK = "~"
OLD_VECTOR_CHUNK = 4096
# Entries of the (old, new) distance matrix computed at once: 16 MB of float32.
PRODUCT_CHUNK_ENTRIES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Snapshot:
    """One consistent state of a bank, never changed after it is published."""

    index: faiss.IndexIDMap2
    kind: str  # "flat" or "hnsw"
    version: int
    ids: tuple[str, ...]
    positions: dict[str, int]  # sample id -> FAISS id
    neighbor_distances: np.ndarray  # (N, K) float64, leave-one-out, inf-padded
    neighbor_ids: np.ndarray  # (N, K) int64, -1-padded
    threshold: float | None


@dataclass
class _Bank:
    name: str
    folder: Path
    config: BankConfig
    snapshot: _Snapshot
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)
    add_mutex: threading.Lock = field(default_factory=threading.Lock)
    deleted: bool = False

    def info(self) -> BankInfo:
        snapshot = self.snapshot
        return BankInfo(
            name=self.name,
            status="ready",
            config=self.config,
            size=len(snapshot.ids),
            threshold=snapshot.threshold,
            index=snapshot.kind,  # type: ignore[arg-type]
        )


@dataclass
class _UnavailableBank:
    name: str
    folder: Path
    error: str

    def info(self) -> BankInfo:
        return BankInfo(name=self.name, status="unavailable", error=self.error)

    def raise_unavailable(self) -> None:
        raise BankUnavailable(
            f"bank {self.name!r} is unavailable: {self.error}. Restore its files or delete the bank."
        )


class FaissBankStore(BankStore):
    """Bank store on local FAISS indexes: exact (flat) search up to ``hnsw_min_size`` samples, HNSW from there.

    ``faiss_threads`` is the number of OpenMP threads each FAISS call may use. It is set
    in the calling thread before every call, because OpenMP keeps that setting per thread.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        hnsw_min_size: int = 50_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 200,
        hnsw_ef_search: int = 128,
        faiss_threads: int = 1,
    ) -> None:
        for label, value in (
            ("hnsw_min_size", hnsw_min_size),
            ("hnsw_m", hnsw_m),
            ("hnsw_ef_construction", hnsw_ef_construction),
            ("hnsw_ef_search", hnsw_ef_search),
            ("faiss_threads", faiss_threads),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        self.root = Path(data_dir) / "banks"
        self.hnsw_min_size = hnsw_min_size
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.faiss_threads = faiss_threads
        self._banks: dict[str, _Bank | _UnavailableBank] = {}
        self._registry_lock = threading.Lock()
        self._folder_lock: int | None = None  # descriptor holding the data folder's lock

    # --- registry -----------------------------------------------------------------------

    def load(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_folder()
        self._limit_threads()
        banks: dict[str, _Bank | _UnavailableBank] = {}
        for folder in sorted(self.root.iterdir()):
            if _TRANSIENT_MARK in folder.name:
                logger.warning("removing %s left by an interrupted bank create or delete", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if not folder.is_dir():
                continue
            try:
                validate_bank_name(folder.name)
            except InvalidInput:
                logger.warning("ignoring %s: not a valid bank name", folder)
                continue
            banks[folder.name] = self._load_folder(folder)

        with self._registry_lock:
            self._banks = banks
        unavailable = sum(isinstance(bank, _UnavailableBank) for bank in banks.values())
        logger.info("loaded %d banks from %s (%d unavailable)", len(banks), self.root, unavailable)

    def close(self) -> None:
        if self._folder_lock is not None:
            os.close(self._folder_lock)  # closing the descriptor releases the lock
            self._folder_lock = None

    def create(self, name: str, config: BankConfig) -> tuple[BankInfo, bool]:
        validate_bank_name(name)
        with self._registry_lock:
            existing = self._banks.get(name)
            if isinstance(existing, _UnavailableBank):
                existing.raise_unavailable()
            if isinstance(existing, _Bank):
                differences = existing.config.differences(config)
                if differences:
                    raise Conflict(f"bank {name!r} already exists with other settings: {'; '.join(differences)}")
                return existing.info(), False

            bank = self._create_folder(name, config)
            self._banks[name] = bank
        logger.info("created bank %s (model %s, dim %d, %s, k=%d)", name, config.model, config.dim, config.metric, config.k)
        return bank.info(), True

    def info(self, name: str) -> BankInfo:
        return self._ready_bank(name).info()

    def list_banks(self) -> list[BankInfo]:
        with self._registry_lock:
            banks = sorted(self._banks.values(), key=lambda bank: bank.name)
        return [bank.info() for bank in banks]

    def delete(self, name: str) -> BankInfo:
        validate_bank_name(name)
        bank = self._lookup(name)
        if isinstance(bank, _Bank):
            # Wait for a running add and for running scores, then retire the bank.
            with bank.add_mutex, bank.lock.write():
                info = bank.info()
                self._remove(bank)
        else:
            info = bank.info()
            self._remove(bank)
        logger.info("deleted bank %s", name)
        return info

    # --- samples ------------------------------------------------------------------------

    def add(self, name: str, vectors: np.ndarray, ids: list[str] | None = None) -> AddResult:
        bank = self._ready_bank(name)
        self._limit_threads()
        with bank.add_mutex:
            if bank.deleted:
                raise NotFound(f"bank {name!r} not found")
            current = bank.snapshot
            prepared = prepare_vectors(vectors, bank.config.dim, bank.config.metric)
            new_ids = self._resolve_ids(bank, current, len(prepared), ids)

            snapshot = self._extend(bank.name, bank.config, current, prepared, new_ids)
            self._save(bank, snapshot)
            with bank.lock.write():
                bank.snapshot = snapshot

        logger.debug("bank %s: added %d samples, size %d, threshold %s", name, len(new_ids), len(snapshot.ids), snapshot.threshold)
        return AddResult(added=len(new_ids), ids=new_ids, size=len(snapshot.ids), threshold=snapshot.threshold)

    def score(self, name: str, vectors: np.ndarray, return_neighbors: bool = False) -> list[ScoreResult]:
        bank = self._ready_bank(name)
        prepared = prepare_vectors(vectors, bank.config.dim, bank.config.metric)
        self._limit_threads()
        with bank.lock.read():
            if bank.deleted:
                raise NotFound(f"bank {name!r} not found")
            snapshot = bank.snapshot
            count = min(bank.config.k, len(snapshot.ids))
            distances, neighbor_ids = nearest(snapshot.index, prepared, count, bank.config.metric)

        means, used = mean_distances(distances)
        return [
            self._score_result(snapshot, means[row], int(used[row]), distances[row], neighbor_ids[row], return_neighbors)
            for row in range(len(prepared))
        ]

    # --- internals ----------------------------------------------------------------------

    def _limit_threads(self) -> None:
        faiss.omp_set_num_threads(self.faiss_threads)

    def _lock_folder(self) -> None:
        """Take the data folder's exclusive lock, or raise RuntimeError when another store holds it."""
        if self._folder_lock is not None:
            return
        try:
            import fcntl
        except ImportError:  # Windows has no flock; one process per folder is then up to the operator
            logger.warning("cannot lock %s on this platform; run one service per data folder", self.root)
            return
        path = self.root.parent / "banks.lock"
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(descriptor)
            raise RuntimeError(
                f"{path} is locked by another process: each service needs its own data folder (--data-dir)"
            ) from error
        self._folder_lock = descriptor

    def _lookup(self, name: str) -> _Bank | _UnavailableBank:
        with self._registry_lock:
            bank = self._banks.get(name)
        if bank is None:
            raise NotFound(f"bank {name!r} not found; create it with PUT /v1/banks/{name}")
        return bank

    def _ready_bank(self, name: str) -> _Bank:
        validate_bank_name(name)
        bank = self._lookup(name)
        if isinstance(bank, _UnavailableBank):
            bank.raise_unavailable()
        assert isinstance(bank, _Bank)
        return bank

    def _load_folder(self, folder: Path) -> _Bank | _UnavailableBank:
        try:
            files = load_bank(folder)
        except BankFileError as error:
            logger.error("bank %s is unavailable: %s", folder.name, error)
            return _UnavailableBank(name=folder.name, folder=folder, error=str(error))

        meta = files.meta
        if meta.index_kind == "hnsw":
            self._tune_hnsw(files.index, meta.config.k)
        snapshot = _Snapshot(
            index=files.index,
            kind=meta.index_kind,
            version=meta.version,
            ids=tuple(meta.ids),
            positions={sample_id: position for position, sample_id in enumerate(meta.ids)},
            neighbor_distances=files.neighbor_distances,
            neighbor_ids=files.neighbor_ids,
            threshold=threshold_from_neighbors(files.neighbor_distances, meta.config.threshold_percentile),
        )
        return _Bank(name=meta.name, folder=folder, config=meta.config, snapshot=snapshot)

    def _create_folder(self, name: str, config: BankConfig) -> _Bank:
        """Write an empty bank under a temporary folder name, then rename it into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.root / name
        if folder.resolve().parent != self.root.resolve():
            raise InvalidInput(f"bank name {name!r} resolves outside the bank folder")
        if folder.exists():
            raise Conflict(f"bank folder {folder} already exists but the bank is not loaded; restart the service")

        snapshot = _Snapshot(
            index=build_flat_index(config.dim, config.metric),
            kind="flat",
            version=0,
            ids=(),
            positions={},
            neighbor_distances=np.full((0, config.k), np.inf),
            neighbor_ids=np.full((0, config.k), -1, dtype=np.int64),
            threshold=None,
        )
        staging = self.root / f"{_TRANSIENT_MARK}create{_TRANSIENT_MARK}{name}{_TRANSIENT_MARK}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            save_bank(staging, self._files(name, config, snapshot))
            staging.rename(folder)
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return _Bank(name=name, folder=folder, config=config, snapshot=snapshot)

    def _remove(self, bank: _Bank | _UnavailableBank) -> None:
        """Unregister ``bank`` and remove its folder (renamed first, so a crash cannot leave half a bank)."""
        with self._registry_lock:
            if self._banks.get(bank.name) is not bank:
                raise NotFound(f"bank {bank.name!r} not found")
            retired = self.root / f"{_TRANSIENT_MARK}delete{_TRANSIENT_MARK}{bank.name}{_TRANSIENT_MARK}{uuid.uuid4().hex}"
            if bank.folder.exists():
                bank.folder.rename(retired)
                fsync_dir(self.root)
            del self._banks[bank.name]
            if isinstance(bank, _Bank):
                bank.deleted = True
        shutil.rmtree(retired, ignore_errors=True)

    def _resolve_ids(self, bank: _Bank, snapshot: _Snapshot, count: int, ids: list[str] | None) -> list[str]:
        """Validate client ids against the batch and the bank, or generate fresh ones."""
        if ids is None:
            return [uuid.uuid4().hex for _ in range(count)]
        if len(ids) != count:
            raise InvalidInput(f"got {len(ids)} ids for {count} vectors: send one id per vector, or none")
        seen: set[str] = set()
        for position, sample_id in enumerate(ids):
            if not isinstance(sample_id, str) or not 1 <= len(sample_id) <= MAX_SAMPLE_ID_LENGTH:
                raise InvalidInput(f"ids[{position}] must be a string of 1-{MAX_SAMPLE_ID_LENGTH} characters")
            if sample_id in seen:
                raise InvalidInput(f"ids[{position}] {sample_id!r} appears more than once in the request")
            if sample_id in snapshot.positions:
                raise Conflict(f"sample id {sample_id!r} already exists in bank {bank.name!r}")
            seen.add(sample_id)
        return list(ids)

    def _extend(
        self, name: str, config: BankConfig, current: _Snapshot, vectors: np.ndarray, new_ids: list[str]
    ) -> _Snapshot:
        """Build the snapshot with ``vectors`` (M, D) added, leaving ``current`` untouched."""
        old_count = len(current.ids)
        total = old_count + len(vectors)
        new_faiss_ids = np.arange(old_count, total, dtype=np.int64)

        kind = current.kind
        if kind == "flat" and total >= self.hnsw_min_size:
            index = self._hnsw_with(current.index, config)
            kind = "hnsw"
            logger.info("bank %s reaches %d samples: switching its index from flat to HNSW", name, total)
        else:
            index = faiss.clone_index(current.index)
        index.add_with_ids(vectors, new_faiss_ids)

        # A new sample may enter an old sample's nearest, so every old sample searches the
        # new ones exhaustively, which keeps its list exact.
        old_distances, old_ids = self._update_old_neighbors(current, vectors, new_faiss_ids, config)
        new_distances, new_ids_found = nearest(index, vectors, config.k, config.metric, exclude_ids=new_faiss_ids)
        distances = np.concatenate([old_distances, new_distances])
        neighbor_ids = np.concatenate([old_ids, new_ids_found])

        ids = current.ids + tuple(new_ids)
        positions = dict(current.positions)
        positions.update({sample_id: old_count + offset for offset, sample_id in enumerate(new_ids)})
        return _Snapshot(
            index=index,
            kind=kind,
            version=current.version + 1,
            ids=ids,
            positions=positions,
            neighbor_distances=distances,
            neighbor_ids=neighbor_ids,
            threshold=threshold_from_neighbors(distances, config.threshold_percentile),
        )

    def _update_old_neighbors(
        self, current: _Snapshot, vectors: np.ndarray, new_faiss_ids: np.ndarray, config: BankConfig
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge each old sample's leave-one-out neighbours with its nearest new samples.

        A new sample enters an old sample's list only when it is closer than that list's
        k-th neighbour (new ids are larger, so an equal distance does not displace it). A
        float32 matrix product finds the old samples that some new sample comes that
        close to, with a margin for rounding, and only those are searched and merged
        exactly. The others keep their lists.

        NOTE: the product still compares every old sample with every new one, O(N * M * D)
        per add, also for HNSW banks.
        """
        old_count = len(current.ids)
        if old_count == 0:
            return current.neighbor_distances, current.neighbor_ids
        batch_index = build_flat_index(config.dim, config.metric)
        batch_index.add_with_ids(vectors, new_faiss_ids)

        distances = current.neighbor_distances.copy()
        neighbor_ids = current.neighbor_ids.copy()
        kth = current.neighbor_distances[:, -1]  # (N,), inf while a sample has fewer than k neighbours
        chunk = max(1, min(OLD_VECTOR_CHUNK, PRODUCT_CHUNK_ENTRIES // len(vectors)))
        for start in range(0, old_count, chunk):
            stop = min(start + chunk, old_count)
            old_vectors = current.index.reconstruct_batch(np.arange(start, stop, dtype=np.int64))
            rows = start + np.flatnonzero(_may_gain_neighbor(old_vectors, vectors, kth[start:stop], config.metric))
            if len(rows) == 0:
                continue
            found_distances, found_ids = nearest(batch_index, old_vectors[rows - start], config.k, config.metric)
            distances[rows], neighbor_ids[rows] = merge_neighbors(
                current.neighbor_distances[rows], current.neighbor_ids[rows], found_distances, found_ids
            )
        return distances, neighbor_ids

    def _hnsw_with(self, flat: faiss.IndexIDMap2, config: BankConfig) -> faiss.IndexIDMap2:
        """Return a new HNSW index containing every vector of ``flat`` under the same ids."""
        index = build_hnsw_index(config.dim, config.metric, self.hnsw_m, self.hnsw_ef_construction, self.hnsw_ef_search)
        self._tune_hnsw(index, config.k)
        if flat.ntotal:
            ids = np.arange(flat.ntotal, dtype=np.int64)
            index.add_with_ids(flat.reconstruct_batch(ids), ids)
        return index

    def _tune_hnsw(self, index: faiss.IndexIDMap2, k: int) -> None:
        """Set efSearch to at least the candidates a search fetches, so the graph returns them all."""
        inner = faiss.downcast_index(index.index)
        inner.hnsw.efSearch = max(self.hnsw_ef_search, k + TIE_MARGIN + 1)

    def _save(self, bank: _Bank, snapshot: _Snapshot) -> None:
        save_bank(bank.folder, self._files(bank.name, bank.config, snapshot))

    def _files(self, name: str, config: BankConfig, snapshot: _Snapshot) -> BankFiles:
        meta = BankMeta(
            format_version=FORMAT_VERSION,
            name=name,
            config=config,
            index_kind=snapshot.kind,  # type: ignore[arg-type]
            version=snapshot.version,
            index_file=index_file_name(snapshot.version),
            neighbors_file=neighbors_file_name(snapshot.version),
            ids=list(snapshot.ids),
            threshold=snapshot.threshold,
        )
        return BankFiles(
            meta=meta,
            index=snapshot.index,
            neighbor_distances=snapshot.neighbor_distances,
            neighbor_ids=snapshot.neighbor_ids,
        )

    @staticmethod
    def _score_result(
        snapshot: _Snapshot,
        mean: float,
        used: int,
        distances: np.ndarray,
        neighbor_ids: np.ndarray,
        return_neighbors: bool,
    ) -> ScoreResult:
        threshold = snapshot.threshold
        score = float(mean) if used else None
        is_anomaly = None if threshold is None or score is None else score > threshold
        neighbors = []
        if return_neighbors:
            neighbors = [
                Neighbor(id=snapshot.ids[int(neighbor_ids[slot])], distance=float(distances[slot])) for slot in range(used)
            ]
        return ScoreResult(score=score, is_anomaly=is_anomaly, threshold=threshold, neighbors_used=used, neighbors=neighbors)


def _may_gain_neighbor(old_vectors: np.ndarray, new_vectors: np.ndarray, kth: np.ndarray, metric: str) -> np.ndarray:
    """Return which old samples (C,) have a new sample within their k-th neighbour distance ``kth`` (C,), plus a margin.

    Distances come from one float32 matrix product. Its rounding error is at most about
    D * 2^-24 times the squared norms involved, and the margin is many times that, so no
    old sample that gains a neighbour is missed. A few more are let through, which costs
    only their exact search.
    """
    dim = old_vectors.shape[1]
    tolerance = max(1e-3, 64 * dim * 2.0**-24)
    products = old_vectors @ new_vectors.T  # (C, M) float32
    if metric == "cosine":
        closest = 1.0 - products.max(axis=1).astype(np.float64)  # unit vectors: distance = 1 - inner product
        return closest <= kth + tolerance
    old_norms = (old_vectors.astype(np.float64) ** 2).sum(axis=1)  # (C,)
    new_norms = (new_vectors.astype(np.float64) ** 2).sum(axis=1)  # (M,)
    # squared L2 = |x|^2 + |y|^2 - 2 x.y, minimised over y before |x|^2 is added
    closest = old_norms + (new_norms.astype(np.float32)[None, :] - 2.0 * products).min(axis=1)
    return closest <= kth**2 + tolerance * (old_norms + new_norms.max())

