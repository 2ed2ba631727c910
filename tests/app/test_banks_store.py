"""FAISS bank store: thresholds, scoring, validation, persistence, crashes and threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.banks import BankConfig, BankUnavailable, FaissBankStore, create_bank_store
from app.banks.neighbors import exact_distances
from app.errors import Conflict, InvalidInput, NotFound

REPO_ROOT = Path(__file__).resolve().parents[2]


_OPEN_STORES: list[FaissBankStore] = []


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPEN_STORES:
        _OPEN_STORES.pop().close()


def open_store(data_dir: Path, **options: int) -> FaissBankStore:
    store = FaissBankStore(data_dir, **options)
    store.load()
    _OPEN_STORES.append(store)
    return store


def reopen(store: FaissBankStore, **options: int) -> FaissBankStore:
    """Close ``store`` and load its data folder into a new store, as a service restart does."""
    store.close()
    return open_store(store.root.parent, **options)


def line_points(*xs: float) -> np.ndarray:
    """Return points (N, 2) on the x axis, so L2 distances are plain differences."""
    return np.array([[x, 0.0] for x in xs])


def reference_loo_scores(vectors: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Compute leave-one-out scores by brute force, excluding each sample itself by position."""
    array = vectors.astype(np.float64)
    if metric == "cosine":
        array = (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
        distances = np.clip(1.0 - array @ array.T, 0.0, 2.0)
    else:
        array = array.astype(np.float32).astype(np.float64)  # the bank stores float32
        distances = np.sqrt(((array[:, None, :] - array[None, :, :]) ** 2).sum(axis=-1))
    np.fill_diagonal(distances, np.inf)
    used = min(k, len(array) - 1)
    return np.sort(distances, axis=1)[:, :used].mean(axis=1)


def bank_files(store: FaissBankStore, name: str) -> dict[str, bytes]:
    folder = store.root / name
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# --- thresholds -----------------------------------------------------------------------


def test_threshold_hand_computed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("line", BankConfig(model="m", dim=2, k=2, metric="l2", threshold_percentile=95))
    result = store.add("line", line_points(0, 1, 3, 6, 10))
    # Leave-one-out scores with k=2: 0 -> (1+3)/2, 1 -> (1+2)/2, 3 -> (2+3)/2, 6 -> (3+4)/2,
    # 10 -> (4+7)/2. Sorted, that is [1.5, 2, 2.5, 3.5, 5.5], and the 95th percentile lies
    # at position 3.8: 3.5 + 0.8 * (5.5 - 3.5) = 5.1.
    assert result.threshold == pytest.approx(5.1)
    assert store.info("line").threshold == pytest.approx(5.1)


def test_threshold_median_hand_computed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("line", BankConfig(model="m", dim=2, k=2, metric="l2", threshold_percentile=50))
    assert store.add("line", line_points(0, 1, 3, 6, 10)).threshold == pytest.approx(2.5)


def test_threshold_duplicates_not_self(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("dup", BankConfig(model="m", dim=2, k=2, metric="l2", threshold_percentile=50))
    # Each 0 has the other 0 (distance 0) and 5 as neighbours: (0+5)/2. The 5 has both 0s: 5.
    result = store.add("dup", line_points(0, 0, 5))
    assert result.threshold == pytest.approx(2.5)


def test_threshold_duplicates_k1(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("dup", BankConfig(model="m", dim=2, k=1, metric="l2", threshold_percentile=0))
    assert store.add("dup", line_points(0, 0, 0, 5)).threshold == 0.0


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_threshold_matches_brute_force(tmp_path: Path, metric: str) -> None:
    vectors = np.random.default_rng(0).normal(size=(60, 8))
    store = open_store(tmp_path)
    store.create("random", BankConfig(model="m", dim=8, k=5, metric=metric, threshold_percentile=90))
    for batch in np.array_split(vectors, [7, 8, 30]):  # several adds exercise the incremental update
        result = store.add("random", batch)
    expected = np.percentile(reference_loo_scores(vectors, 5, metric), 90)
    assert result.threshold == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_threshold_none_below_two(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    info, _ = store.create("one", BankConfig(model="m", dim=2))
    assert info.threshold is None
    assert store.add("one", line_points(1)).threshold is None
    assert store.add("one", line_points(2)).threshold is not None


# --- scoring --------------------------------------------------------------------------


def test_score_mean_of_k_nearest(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("line", BankConfig(model="m", dim=2, k=2, metric="l2"))
    store.add("line", line_points(0, 1, 3, 6, 10), ids=["a", "b", "c", "d", "e"])
    [result] = store.score("line", line_points(2), return_neighbors=True)
    assert result.score == pytest.approx(1.0)  # |2-1| and |2-3|
    assert result.neighbors_used == 2
    assert [neighbor.id for neighbor in result.neighbors] == ["b", "c"]
    assert [neighbor.distance for neighbor in result.neighbors] == pytest.approx([1.0, 1.0])


def test_score_is_anomaly_above_threshold(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("line", BankConfig(model="m", dim=2, k=2, metric="l2"))
    store.add("line", line_points(0, 1, 3, 6, 10))
    near, far = store.score("line", line_points(2, 100))
    assert near.is_anomaly is False
    assert far.is_anomaly is True
    assert far.threshold == pytest.approx(5.1)


def test_score_k_larger_than_bank(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("small", BankConfig(model="m", dim=2, k=5, metric="l2"))
    store.add("small", line_points(0, 2, 4), ids=["a", "b", "c"])
    [result] = store.score("small", line_points(1), return_neighbors=True)
    assert result.neighbors_used == 3
    assert result.score == pytest.approx((1 + 1 + 3) / 3)
    assert sorted(neighbor.id for neighbor in result.neighbors) == ["a", "b", "c"]
    assert all(neighbor.distance < 1e30 for neighbor in result.neighbors)
    # Leave-one-out with two others each: 0 -> 3, 2 -> 2, 4 -> 3. The 95th percentile is 3.
    assert result.threshold == pytest.approx(3.0)


def test_score_empty_bank(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("empty", BankConfig(model="m", dim=2))
    [result] = store.score("empty", line_points(1), return_neighbors=True)
    assert result.score is None
    assert result.is_anomaly is None
    assert result.threshold is None
    assert result.neighbors_used == 0
    assert result.neighbors == []


def test_score_single_sample_bank(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("one", BankConfig(model="m", dim=2, metric="l2"))
    store.add("one", line_points(3), ids=["only"])
    [result] = store.score("one", line_points(1), return_neighbors=True)
    assert result.score == pytest.approx(2.0)
    assert result.is_anomaly is None
    assert result.threshold is None
    assert result.neighbors_used == 1
    assert result.neighbors[0].id == "only"


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize(("size", "hnsw_min_size"), [(10_000, 20_000), (2000, 1000)], ids=["flat", "hnsw"])
def test_score_batch_equals_single(tmp_path: Path, metric: str, size: int, hnsw_min_size: int) -> None:
    # Against 10000 samples, FAISS 1.15 returns slightly different distances for a batch
    # of queries than for each query searched alone.
    rng = np.random.default_rng(1)
    store = open_store(tmp_path, hnsw_min_size=hnsw_min_size, hnsw_m=8, hnsw_ef_construction=40)
    store.create("bank", BankConfig(model="m", dim=8, k=5, metric=metric))
    store.add("bank", rng.normal(size=(size, 8)))
    queries = rng.normal(size=(32, 8))
    batch = store.score("bank", queries, return_neighbors=True)
    singles = [store.score("bank", queries[row : row + 1], return_neighbors=True)[0] for row in range(len(queries))]
    assert [result.score for result in batch] == [result.score for result in singles]
    assert [result.neighbors for result in batch] == [result.neighbors for result in singles]


def test_score_cosine_scale_invariant(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    store.add("bank", rng.normal(size=(20, 4)))
    query = rng.normal(size=(1, 4))
    assert store.score("bank", query)[0].score == pytest.approx(store.score("bank", 10 * query)[0].score)


# --- validation -----------------------------------------------------------------------


def test_add_wrong_width(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    with pytest.raises(InvalidInput, match="width 3 does not match the bank's width 4"):
        store.add("bank", np.ones((2, 3)))


def test_score_wrong_width(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    with pytest.raises(InvalidInput, match="width 5 does not match the bank's width 4"):
        store.score("bank", np.ones((1, 5)))


@pytest.mark.parametrize(
    ("vectors", "ids", "error", "message"),
    [
        (np.ones((2, 3)), None, InvalidInput, "width 3"),
        (np.array([[1.0, np.nan, 0, 0]]), None, InvalidInput, "NaN"),
        (np.zeros((1, 4)), None, InvalidInput, "zero length"),
        (np.ones((2, 4)), ["x"], InvalidInput, "1 ids for 2 vectors"),
        (np.ones((2, 4)), ["x", "x"], InvalidInput, "more than once"),
        (np.ones((1, 4)), ["first"], Conflict, "already exists"),
        (np.ones((1, 4)), [""], InvalidInput, "1-256 characters"),
        (np.ones((0, 4)), None, InvalidInput, "empty"),
    ],
    ids=["width", "nan", "zero", "id-count", "id-repeat", "id-taken", "id-empty", "no-vectors"],
)
def test_add_bad_input_changes_nothing(
    tmp_path: Path, vectors: np.ndarray, ids: list[str] | None, error: type[Exception], message: str
) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    store.add("bank", np.random.default_rng(3).normal(size=(6, 4)), ids=["first", "b", "c", "d", "e", "f"])
    before_info, before_files = store.info("bank"), bank_files(store, "bank")
    with pytest.raises(error, match=message):
        store.add("bank", vectors, ids=ids)
    assert store.info("bank") == before_info
    assert bank_files(store, "bank") == before_files


# --- bank lifecycle -------------------------------------------------------------------


def test_create_same_settings_again(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    first, created = store.create("bank", BankConfig(model="m", dim=4))
    second, created_again = store.create("bank", BankConfig(model="m", dim=4, k=5))
    assert created is True
    assert created_again is False
    assert first == second


def test_create_other_settings_conflict(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    with pytest.raises(Conflict, match="k is 5, requested 7"):
        store.create("bank", BankConfig(model="m", dim=4, k=7))


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "../x", "x" * 65, "sp ace", "caf\u00e9"])
def test_invalid_bank_names(tmp_path: Path, name: str) -> None:
    store = open_store(tmp_path)
    with pytest.raises(InvalidInput, match="is invalid"):
        store.create(name, BankConfig(model="m", dim=4))
    assert list(store.root.iterdir()) == []


def test_dotted_name_stays_inside(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("..hidden", BankConfig(model="m", dim=4))
    assert (store.root / "..hidden" / "meta.json").is_file()


def test_unknown_bank_not_found(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(NotFound, match="'nope' not found"):
        store.info("nope")


def test_delete_removes_files(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    store.delete("bank")
    assert not (store.root / "bank").exists()
    with pytest.raises(NotFound):
        store.score("bank", np.ones((1, 4)))
    with pytest.raises(NotFound):
        store.delete("bank")


def test_delete_then_recreate(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=4))
    store.add("bank", np.ones((3, 4)))
    store.delete("bank")
    info, created = store.create("bank", BankConfig(model="other", dim=2))
    assert created is True
    assert info.size == 0


def test_list_banks_sorted(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for name in ("b", "a", "c"):
        store.create(name, BankConfig(model="m", dim=4))
    assert [info.name for info in store.list_banks()] == ["a", "b", "c"]


def test_info_to_dict(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    info, _ = store.create("bank", BankConfig(model="m", dim=4, metric="l2"))
    assert info.to_dict() == {
        "name": "bank",
        "status": "ready",
        "model": "m",
        "dim": 4,
        "k": 5,
        "metric": "l2",
        "threshold_percentile": 95.0,
        "size": 0,
        "threshold": None,
        "index": "flat",
    }


# --- persistence ----------------------------------------------------------------------


def test_persistence_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = open_store(tmp_path)
    for metric in ("cosine", "l2"):
        store.create(metric, BankConfig(model="m", dim=6, k=3, metric=metric, threshold_percentile=80))
        store.add(metric, rng.normal(size=(30, 6)))
        store.add(metric, rng.normal(size=(5, 6)), ids=[f"late-{i}" for i in range(5)])
    queries = rng.normal(size=(10, 6))

    reopened = reopen(store)
    assert reopened.list_banks() == store.list_banks()
    for metric in ("cosine", "l2"):
        assert reopened.score(metric, queries, return_neighbors=True) == store.score(metric, queries, return_neighbors=True)
    with pytest.raises(Conflict, match="already exists"):
        reopened.add("l2", np.ones((1, 6)), ids=["late-0"])


def test_persistence_after_more_adds(tmp_path: Path) -> None:
    vectors = np.random.default_rng(5).normal(size=(20, 3))
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=3, k=2, metric="l2"))
    store.add("bank", vectors[:10])
    reopened = reopen(store)
    reopened.add("bank", vectors[10:])
    expected = np.percentile(reference_loo_scores(vectors, 2, "l2"), 95)
    assert reopened.info("bank").threshold == pytest.approx(expected, rel=1e-9)
    assert reopen(reopened).info("bank").size == 20


def test_files_versioned_and_cleaned(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=2))
    store.add("bank", np.ones((2, 2)))
    store.add("bank", np.ones((2, 2)))
    names = sorted(path.name for path in (store.root / "bank").iterdir())
    assert names == ["index-00000002.faiss", "meta.json", "neighbors-00000002.npz"]
    meta = json.loads((store.root / "bank" / "meta.json").read_text())
    assert meta["version"] == 2
    assert meta["index_file"] == "index-00000002.faiss"


def test_crash_leftovers_ignored(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=2, metric="l2"))
    store.add("bank", line_points(0, 1, 3))
    folder = store.root / "bank"
    # What a crash before the commit leaves: next-version files and temporary files.
    (folder / "index-00000002.faiss").write_bytes(b"partial")
    (folder / "meta.json.tmp").write_bytes(b"{")
    (store.root / "~create~other~0123").mkdir()

    reopened = reopen(store)
    assert reopened.info("bank").size == 3
    assert not (folder / "index-00000002.faiss").exists()
    assert not (folder / "meta.json.tmp").exists()
    assert not (store.root / "~create~other~0123").exists()


@pytest.mark.parametrize("damage", ["truncate-index", "garbage-meta", "missing-neighbors", "wrong-count"])
def test_corrupt_bank_unavailable(tmp_path: Path, damage: str) -> None:
    store = open_store(tmp_path)
    for name in ("good", "bad"):
        store.create(name, BankConfig(model="m", dim=4))
        store.add(name, np.random.default_rng(6).normal(size=(8, 4)))
    folder = store.root / "bad"
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    if damage == "truncate-index":
        index_path = folder / meta["index_file"]
        index_path.write_bytes(index_path.read_bytes()[:60])
        bad_file = meta["index_file"]
    elif damage == "garbage-meta":
        meta_path.write_text('{"format_version": 1, "na')
        bad_file = "meta.json"
    elif damage == "missing-neighbors":
        (folder / meta["neighbors_file"]).unlink()
        bad_file = meta["neighbors_file"]
    else:
        meta["ids"] = meta["ids"][:-1]
        meta_path.write_text(json.dumps(meta))
        bad_file = meta["index_file"]

    reopened = reopen(store)
    bad, good = reopened.list_banks()
    assert bad.status == "unavailable"
    assert bad_file in (bad.error or "")
    assert good.status == "ready"
    assert len(reopened.score("good", np.ones((1, 4)))) == 1
    with pytest.raises(BankUnavailable, match=bad_file) as caught:
        reopened.score("bad", np.ones((1, 4)))
    assert caught.value.status == 503
    with pytest.raises(BankUnavailable):
        reopened.create("bad", BankConfig(model="m", dim=4))

    reopened.delete("bad")
    assert reopened.create("bad", BankConfig(model="m", dim=4))[1] is True


def test_create_bank_store_from_settings(tmp_path: Path) -> None:
    class Settings:
        data_dir = tmp_path
        bank_hnsw_min_size = 3

    store = create_bank_store(Settings())
    _OPEN_STORES.append(store)  # type: ignore[arg-type]
    store.create("bank", BankConfig(model="m", dim=2, metric="l2"))
    assert store.add("bank", line_points(0, 1, 2)).size == 3
    assert store.info("bank").index == "hnsw"


def test_second_store_same_folder_fails(tmp_path: Path) -> None:
    open_store(tmp_path)
    with pytest.raises(RuntimeError, match="banks.lock is locked by another process"):
        FaissBankStore(tmp_path).load()


def test_close_releases_folder(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=2))
    assert reopen(store).info("bank").size == 0


def test_store_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hnsw_m must be a positive integer, got 0"):
        FaissBankStore(tmp_path, hnsw_m=0)


# --- HNSW -----------------------------------------------------------------------------


def test_hnsw_above_min_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    store = open_store(tmp_path, hnsw_min_size=40, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=32)
    store.create("bank", BankConfig(model="m", dim=8, k=5))
    store.add("bank", rng.normal(size=(30, 8)))
    assert store.info("bank").index == "flat"
    store.add("bank", rng.normal(size=(30, 8)))
    assert store.info("bank").index == "hnsw"
    store.add("bank", rng.normal(size=(10, 8)))

    results = store.score("bank", rng.normal(size=(20, 8)), return_neighbors=True)
    assert all(result.neighbors_used == 5 for result in results)
    assert all(result.score is not None and 0.0 <= result.score <= 2.0 for result in results)
    assert all(len(result.neighbors) == 5 for result in results)
    reopened = reopen(store, hnsw_min_size=40)
    assert reopened.info("bank").index == "hnsw"
    assert reopened.info("bank").size == 70


def test_hnsw_threshold_close_to_exact(tmp_path: Path) -> None:
    vectors = np.random.default_rng(8).normal(size=(120, 8))
    store = open_store(tmp_path, hnsw_min_size=20)
    store.create("bank", BankConfig(model="m", dim=8, k=5))
    store.add("bank", vectors[:60])
    store.add("bank", vectors[60:])
    expected = np.percentile(reference_loo_scores(vectors, 5, "cosine"), 95)
    assert store.info("bank").threshold == pytest.approx(expected, rel=0.05)


# --- concurrency and crashes ----------------------------------------------------------


def test_threads_add_and_score(tmp_path: Path) -> None:
    dim, adders, adds_each, batch = 8, 4, 10, 5
    store = open_store(tmp_path)
    store.create("bank", BankConfig(model="m", dim=dim, k=3, metric="l2"))
    store.add("bank", np.random.default_rng(9).normal(size=(5, dim)))
    added: list[np.ndarray] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def add_worker(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        try:
            for _ in range(adds_each):
                vectors = rng.normal(size=(batch, dim))
                store.add("bank", vectors)
                with lock:
                    added.append(vectors)
        except BaseException as error:
            errors.append(error)

    def score_worker(seed: int) -> None:
        rng = np.random.default_rng(200 + seed)
        try:
            for _ in range(20):
                for result in store.score("bank", rng.normal(size=(4, dim)), return_neighbors=True):
                    assert result.neighbors_used == 3
                    assert all(neighbor.distance < 1e30 for neighbor in result.neighbors)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=add_worker, args=(i,)) for i in range(adders)]
    threads += [threading.Thread(target=score_worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert store.info("bank").size == 5 + adders * adds_each * batch

    every = np.concatenate([np.random.default_rng(9).normal(size=(5, dim)), *added])
    expected = np.percentile(reference_loo_scores(every, 3, "l2"), 95)
    assert store.info("bank").threshold == pytest.approx(expected, rel=1e-9)
    assert reopen(store).info("bank").size == len(every)


CRASH_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from app.banks import BankConfig, FaissBankStore

    store = FaissBankStore(sys.argv[1])
    store.load()
    store.create("crash", BankConfig(model="m", dim=16))
    rng = np.random.default_rng(0)
    for step in range(5000):
        store.add("crash", rng.normal(size=(4, 16)), ids=[f"{step}-{j}" for j in range(4)])
        sys.stdout.write(f"{step}\\n")
        sys.stdout.flush()
    """
)


def test_acknowledged_add_survives_sigkill(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(tmp_path)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged = -1
    deadline = time.monotonic() + 30
    try:
        assert process.stdout is not None
        while acknowledged < 30 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert acknowledged >= 30

    store = open_store(tmp_path)
    info = store.info("crash")
    assert info.status == "ready"
    assert info.size >= 4 * (acknowledged + 1)
    assert info.size % 4 == 0
    with pytest.raises(Conflict):
        store.add("crash", np.ones((1, 16)), ids=[f"{acknowledged}-3"])


def clustered(rows: int, dim: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """Return seeded points (rows, dim) around a few centres, with some exact duplicates."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * scale
    points = centres[rng.integers(0, 4, rows)] + 0.05 * scale * rng.normal(size=(rows, dim))
    points[rows // 2 :: 7] = points[rows // 2]  # duplicates: ties in distance at the k-th place
    return points


@pytest.mark.parametrize(("metric", "scale"), [("cosine", 1.0), ("l2", 1.0), ("l2", 1e4)])
def test_adds_in_parts_keep_exact_neighbors(tmp_path: Path, metric: str, scale: float) -> None:
    vectors = clustered(400, 16, seed=3, scale=scale)
    whole = open_store(tmp_path / "whole")
    parts = open_store(tmp_path / "parts")
    for store in (whole, parts):
        store.create("b", BankConfig(model="m", dim=16, k=5, metric=metric))
    whole.add("b", vectors)
    for batch in np.array_split(vectors, [150, 151, 300, 390]):
        parts.add("b", batch)
    expected = whole._banks["b"].snapshot
    actual = parts._banks["b"].snapshot
    np.testing.assert_array_equal(actual.neighbor_distances, expected.neighbor_distances)
    assert actual.threshold == expected.threshold
    # among exact duplicates either store may name another one at the same distance
    stored = actual.index.reconstruct_batch(np.arange(len(vectors)))
    neighbors = stored[actual.neighbor_ids]  # (N, K, D)
    np.testing.assert_array_equal(exact_distances(stored, neighbors, metric), actual.neighbor_distances)
    assert (actual.neighbor_ids != np.arange(len(vectors))[:, None]).all()
