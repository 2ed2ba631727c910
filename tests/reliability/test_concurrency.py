"""Many clients adding to and scoring one bank at once, over HTTP."""

from __future__ import annotations

import threading

import httpx
import numpy as np

from tests.reliability.conftest import Service
from tests.reliability.helpers import IMAGE_MODEL

BANK = "shared"
K = 3
ADDERS = 4
ADDS_PER_THREAD = 8
BATCH = 4
SCORERS = 4
SCORES_PER_THREAD = 12
DIM = 16


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def brute_force_scores(samples: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Return the mean cosine distance of each query (Q, D) to its K nearest samples (N, D)."""
    distances = 1.0 - unit(queries) @ unit(samples).T  # (Q, N)
    return np.sort(distances, axis=1)[:, :K].mean(axis=1)


def test_concurrent_adds_and_scores(service: Service) -> None:
    rng = np.random.default_rng(0)
    seed = rng.normal(size=(K, DIM))
    batches = rng.normal(size=(ADDERS, ADDS_PER_THREAD, BATCH, DIM))
    queries = rng.normal(size=(2, DIM))
    url = str(service.client.base_url)
    assert service.client.put(f"/v1/banks/{BANK}", json={"model": IMAGE_MODEL, "k": K}).status_code == 201
    seeded = service.client.post(f"/v1/banks/{BANK}/samples", json={"input": [{"embedding": v.tolist()} for v in seed]})
    assert seeded.status_code == 200

    failures: list[str] = []
    observed: list[list[list[float]]] = [[] for _ in range(SCORERS)]  # per scorer: scores of each request, in order

    def add(thread: int) -> None:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            for step in range(ADDS_PER_THREAD):
                items = [{"embedding": v.tolist()} for v in batches[thread, step]]
                ids = [f"{thread}-{step}-{j}" for j in range(BATCH)]
                response = client.post(f"/v1/banks/{BANK}/samples", json={"input": items, "ids": ids})
                if response.status_code != 200:
                    failures.append(f"add {thread}-{step}: {response.status_code} {response.text}")

    def score(thread: int) -> None:
        body = {"input": [{"embedding": q.tolist()} for q in queries]}
        with httpx.Client(base_url=url, timeout=30.0) as client:
            for _ in range(SCORES_PER_THREAD):
                response = client.post(f"/v1/banks/{BANK}/score", json=body)
                if response.status_code != 200:
                    failures.append(f"score {thread}: {response.status_code} {response.text}")
                    continue
                data = response.json()["data"]
                if len({entry["threshold"] for entry in data}) != 1:
                    failures.append(f"score {thread}: one response mixed thresholds {data}")
                observed[thread].append([entry["score"] for entry in data])

    threads = [threading.Thread(target=add, args=(t,)) for t in range(ADDERS)]
    threads += [threading.Thread(target=score, args=(t,)) for t in range(SCORERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    info = service.client.get(f"/v1/banks/{BANK}").json()
    final = service.client.post(f"/v1/banks/{BANK}/score", json={"input": [{"embedding": q.tolist()} for q in queries]})
    expected = brute_force_scores(np.concatenate([seed, batches.reshape(-1, DIM)]), queries)
    # Adding samples can only bring a query's K nearest closer, so each scorer's scores never rise.
    rises = [
        (thread, step)
        for thread, series in enumerate(observed)
        for step in range(1, len(series))
        if any(now > before + 1e-9 for now, before in zip(series[step], series[step - 1]))
    ]

    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert info["size"] == K + ADDERS * ADDS_PER_THREAD * BATCH
    assert rises == []
    np.testing.assert_allclose([entry["score"] for entry in final.json()["data"]], expected, rtol=0, atol=1e-5)
