"""One-class anomaly AUROC on glyphs through the HTTP API, beside raw pixels.

Each letter in turn is normal: a bank is filled with the embeddings of that letter's
training images, and every test image is scored against it (positives: the other nine
letters). Embeddings come from ``POST /v1/embeddings`` of a real ``ssl-serve`` on
127.0.0.1, and banks are filled and scored through ``/v1/banks``, so the numbers are
what a client of the service gets. The raw-pixel baseline (the same k-nearest-neighbour
mean distance on pixels scaled to [0, 1], euclidean) is computed in the same run.

    python -m bench.bench_bank_auroc --model glyphs-simclr
    python -m bench.bench_bank_auroc --model glyphs-simclr --quick   # 2 letters, 300 test images
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from bench.common import write_result
from bench.server import running_server

logger = logging.getLogger("bench.bank_auroc")

REPO_ROOT = Path(__file__).resolve().parents[1]
GLYPHS = REPO_ROOT.parent / "shared" / "data" / "glyphs"
LETTERS = "ABCDEFGHIJ"
CHUNK = 128


def png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def embed_all(client: httpx.Client, model: str, images: np.ndarray) -> np.ndarray:
    """Return the served embeddings (N, D) of uint8 images (N, H, W), CHUNK images per request."""
    vectors = []
    for start in range(0, len(images), CHUNK):
        items = [{"image": png_base64(image)} for image in images[start : start + CHUNK]]
        response = client.post("/v1/embeddings", json={"model": model, "input": items})
        response.raise_for_status()
        vectors.extend(item["embedding"] for item in response.json()["data"])
    return np.asarray(vectors, dtype=np.float32)


def bank_auroc(client: httpx.Client, model: str, bank_vectors: np.ndarray, test_vectors: np.ndarray, is_anomaly: np.ndarray, k: int) -> float:
    """Create a bank, add ``bank_vectors``, score ``test_vectors`` over HTTP; return the AUROC."""
    client.delete("/v1/banks/auroc")
    response = client.put("/v1/banks/auroc", json={"model": model, "k": k, "metric": "cosine"})
    response.raise_for_status()
    for start in range(0, len(bank_vectors), 256):
        chunk = [{"embedding": vector.tolist()} for vector in bank_vectors[start : start + 256]]
        client.post("/v1/banks/auroc/samples", json={"input": chunk}).raise_for_status()
    scores = []
    for start in range(0, len(test_vectors), 256):
        chunk = [{"embedding": vector.tolist()} for vector in test_vectors[start : start + 256]]
        response = client.post("/v1/banks/auroc/score", json={"input": chunk})
        response.raise_for_status()
        scores.extend(item["score"] for item in response.json()["data"])
    client.delete("/v1/banks/auroc")
    return float(roc_auc_score(is_anomaly, scores))


def pixel_auroc(bank_images: np.ndarray, test_images: np.ndarray, is_anomaly: np.ndarray, k: int) -> float:
    """Return the AUROC of the mean euclidean distance to the k nearest bank images on raw pixels."""
    bank = bank_images.reshape(len(bank_images), -1).astype(np.float32) / 255.0
    test = test_images.reshape(len(test_images), -1).astype(np.float32) / 255.0
    squared = (test**2).sum(1)[:, None] - 2 * test @ bank.T + (bank**2).sum(1)[None]
    nearest = np.sort(np.sqrt(np.maximum(squared, 0)), axis=1)[:, :k]
    return float(roc_auc_score(is_anomaly, nearest.mean(axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="glyphs-simclr", help="served image model to evaluate")
    parser.add_argument("--models-dir", default=str(REPO_ROOT / "models"))
    parser.add_argument("--k", type=int, default=5, help="neighbours per score")
    parser.add_argument("--quick", action="store_true", help="2 letters and 300 test images")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    train = np.load(GLYPHS / "glyphs-train.npz")
    test = np.load(GLYPHS / "glyphs-test.npz")
    train_images, train_labels = train["images"], train["labels"]
    test_images, test_labels = test["images"], test["labels"]
    letters = range(2) if args.quick else range(10)
    if args.quick:
        keep = np.random.default_rng(0).choice(len(test_images), 300, replace=False)
        test_images, test_labels = test_images[keep], test_labels[keep]
        train_mask = np.isin(train_labels, list(letters))
        train_images, train_labels = train_images[train_mask][:600], train_labels[train_mask][:600]

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir, running_server(
        Path(args.models_dir), Path(data_dir), Path(data_dir) / "server.log", {"EMBED_LOG_LEVEL": "WARNING"}
    ) as server, httpx.Client(base_url=server.base_url, timeout=120) as client:
        train_vectors = embed_all(client, args.model, train_images)
        test_vectors = embed_all(client, args.model, test_images)
        rows = []
        for letter in letters:
            is_anomaly = test_labels != letter
            bank = train_labels == letter
            served = bank_auroc(client, args.model, train_vectors[bank], test_vectors, is_anomaly, args.k)
            pixels = pixel_auroc(train_images[bank], test_images, is_anomaly, args.k)
            rows.append({"letter": LETTERS[letter], "served": round(served, 4), "raw_pixels": round(pixels, 4)})
            logger.info("%s", rows[-1])
    summary = {
        "served_mean": round(float(np.mean([row["served"] for row in rows])), 4),
        "raw_pixels_mean": round(float(np.mean([row["raw_pixels"] for row in rows])), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    command = f"python -m bench.bench_bank_auroc --model {args.model}" + (" --quick" if args.quick else "")
    path = write_result("bank-auroc-quick" if args.quick else "bank-auroc", {"command": command, "k": args.k, "rows": rows, **summary})
    print(json.dumps({"rows": rows, **summary, "record": str(path)}, indent=2))


if __name__ == "__main__":
    main()
