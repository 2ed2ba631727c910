"""Evaluation of frozen embeddings: kNN, linear probes, one-class AUROC and the collapse monitor.

All functions take embeddings as numpy arrays (N, D) and integer labels (N,); samples
labelled -1 are left out of every supervised metric.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def labelled_only(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows of ``embeddings`` and ``labels`` whose label is not -1."""
    if len(embeddings) != len(labels):
        raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    keep = labels >= 0
    return embeddings[keep], labels[keep]


def knn_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    weighted: bool = True,
    chunk_size: int = 1024,
) -> float:
    """Return top-1 accuracy of a cosine kNN classifier.

    With ``weighted``, each of the k neighbours votes with exp(similarity / temperature)
    (Wu et al., 2018); otherwise every vote counts 1. A tie between classes goes to the
    smallest label, as in scikit-learn's KNeighborsClassifier.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    train_embeddings, train_labels = labelled_only(train_embeddings, train_labels)
    test_embeddings, test_labels = labelled_only(test_embeddings, test_labels)
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise ValueError("kNN accuracy needs labelled train and test samples")
    k = min(k, len(train_labels))
    train = l2_normalize(train_embeddings.astype(np.float32))
    test = l2_normalize(test_embeddings.astype(np.float32))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test), chunk_size):
        similarity = test[start : start + chunk_size] @ train.T  # (chunk, N_train)
        neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]  # (chunk, k)
        neighbour_similarity = np.take_along_axis(similarity, neighbours, axis=1)
        votes = np.exp(neighbour_similarity / temperature) if weighted else np.ones_like(neighbour_similarity)
        scores = np.zeros((len(neighbours), classes))
        np.add.at(scores, (np.arange(len(neighbours))[:, None], train_labels[neighbours]), votes)
        correct += int((scores.argmax(axis=1) == test_labels[start : start + chunk_size]).sum())
    return correct / len(test_labels)


def linear_probe_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    C: float = 1.0,
    max_iter: int = 2000,
) -> float:
    """Return the test accuracy of logistic regression on standardised frozen features.

    Raises ValueError when the labelled training samples hold fewer than 2 classes or
    there is no labelled test sample.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_embeddings, train_labels = labelled_only(train_embeddings, train_labels)
    test_embeddings, test_labels = labelled_only(test_embeddings, test_labels)
    if len(np.unique(train_labels)) < 2:
        raise ValueError(f"a linear probe needs labelled training samples of 2 classes or more, got {len(np.unique(train_labels))}")
    if len(test_labels) == 0:
        raise ValueError("a linear probe needs labelled test samples")
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    classifier.fit(train_embeddings, train_labels)
    return float(classifier.score(test_embeddings, test_labels))


def few_shot_probe_accuracy(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    shots: int = 5,
    draws: int = 5,
) -> tuple[float, float]:
    """Return mean and std accuracy of linear probes fitted on ``shots`` labels per class.

    Draw d uses seed d, so results are comparable across encoders. A class with fewer
    than ``shots`` labelled samples contributes all it has.
    """
    if shots < 1:
        raise ValueError(f"shots must be at least 1, got {shots}")
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    train_embeddings, train_labels = labelled_only(train_embeddings, train_labels)
    accuracies = []
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        chosen = np.concatenate([
            rng.choice(np.flatnonzero(train_labels == label), size=min(shots, int((train_labels == label).sum())), replace=False)
            for label in np.unique(train_labels)
        ])
        accuracies.append(linear_probe_accuracy(train_embeddings[chosen], train_labels[chosen], test_embeddings, test_labels))
    return float(np.mean(accuracies)), float(np.std(accuracies))


def one_class_auroc(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    k: int = 5,
    metric: str = "cosine",
) -> dict[str, Any]:
    """Return the one-class anomaly AUROC per class and its mean.

    For each class c, the bank is the training embeddings of c. Every labelled test
    sample is scored by its mean distance to its k nearest bank samples (cosine:
    1 - cosine similarity, l2: Euclidean). The positives (anomalies) are the test
    samples of the other classes. A class absent from the test labels, or the only one there, has
    no AUROC; ``mean`` is None when no class has one.
    """
    from sklearn.metrics import roc_auc_score

    if metric not in ("cosine", "l2"):
        raise ValueError(f"unknown metric {metric!r}; expected cosine or l2")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    train_embeddings, train_labels = labelled_only(train_embeddings, train_labels)
    test_embeddings, test_labels = labelled_only(test_embeddings, test_labels)
    if metric == "cosine":
        train_embeddings, test_embeddings = l2_normalize(train_embeddings), l2_normalize(test_embeddings)
    per_class = {}
    for label in np.unique(train_labels):
        is_anomaly = test_labels != label
        if is_anomaly.all() or not is_anomaly.any():
            continue
        bank = train_embeddings[train_labels == label]
        scores = _mean_nearest_distance(test_embeddings, bank, min(k, len(bank)), metric)
        per_class[int(label)] = float(roc_auc_score(is_anomaly, scores))
    return {"per_class": per_class, "mean": float(np.mean(list(per_class.values()))) if per_class else None}


def _mean_nearest_distance(queries: np.ndarray, bank: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Return the mean distance (Q,) of each query (Q, D) to its k nearest rows of ``bank`` (M, D)."""
    if metric == "cosine":
        distances = 1.0 - queries @ bank.T  # (Q, M)
    else:
        squared = (queries**2).sum(1)[:, None] - 2 * queries @ bank.T + (bank**2).sum(1)[None]
        distances = np.sqrt(np.maximum(squared, 0))
    return np.sort(distances, axis=1)[:, :k].mean(axis=1)


def embedding_spread(embeddings: np.ndarray) -> dict[str, float]:
    """Return the collapse monitor's figures for embeddings (N, D).

    ``embedding_std`` is the per-dimension std of the L2-normalised embeddings, averaged
    over dimensions (Chen & He, 2021, SimSiam). It tends to 0 when every sample maps to
    one vector, and ``collapse_reference`` 1/sqrt(D) is its value for isotropic
    embeddings. ``embedding_effective_rank`` is exp of the entropy of the normalised
    singular values of the centred embeddings (RankMe, Garrido et al., 2023): up to D, and
    low when the embeddings fill only a few directions (dimensional collapse).
    """
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise ValueError(f"embedding spread needs at least 2 embeddings (N, D), got shape {embeddings.shape}")
    embeddings = embeddings.astype(np.float64)
    normalised = l2_normalize(embeddings)
    singular_values = np.linalg.svd(embeddings - embeddings.mean(axis=0), compute_uv=False)
    total = singular_values.sum()
    if total > 0:
        shares = singular_values / total
        shares = shares[shares > 0]
        effective_rank = float(np.exp(-(shares * np.log(shares)).sum()))
    else:
        effective_rank = 0.0
    return {
        "embedding_std": float(normalised.std(axis=0).mean()),
        "collapse_reference": 1.0 / math.sqrt(embeddings.shape[1]),
        "embedding_effective_rank": effective_rank,
    }
