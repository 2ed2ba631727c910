"""Evaluation of frozen embeddings: kNN, linear probes, one-class AUROC.

All functions take embeddings as numpy arrays (N, D) and integer labels (N,); samples
labelled -1 are left out of every supervised metric.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


def _labelled(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    (Wu et al., 2018); otherwise every vote counts 1.
    """
    train_embeddings, train_labels = _labelled(train_embeddings, train_labels)
    test_embeddings, test_labels = _labelled(test_embeddings, test_labels)
    if len(train_labels) == 0 or len(test_labels) == 0:
        raise ValueError("kNN accuracy needs labelled train and test samples")
    k = min(k, len(train_labels))
    train = l2_normalize(train_embeddings.astype(np.float32))
    test = l2_normalize(test_embeddings.astype(np.float32))
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test), chunk_size):
        similarity = test[start : start + chunk_size] @ train.T  # (chunk, N_train)
        neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
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
    """Return the test accuracy of logistic regression on standardised frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_embeddings, train_labels = _labelled(train_embeddings, train_labels)
    test_embeddings, test_labels = _labelled(test_embeddings, test_labels)
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

    Draw d uses seed d, so results are comparable across encoders.
    """
    train_embeddings, train_labels = _labelled(train_embeddings, train_labels)
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

    For each class c, the bank is the training embeddings of c; every test sample is
    scored by its mean distance to its k nearest bank samples, and the positives are
    the test samples of the other classes.
    """
    from sklearn.metrics import roc_auc_score

    train_embeddings, train_labels = _labelled(train_embeddings, train_labels)
    test_embeddings, test_labels = _labelled(test_embeddings, test_labels)
    if metric == "cosine":
        train_embeddings, test_embeddings = l2_normalize(train_embeddings), l2_normalize(test_embeddings)
    per_class = {}
    for label in np.unique(train_labels):
        bank = train_embeddings[train_labels == label]
        if metric == "cosine":
            distances = 1.0 - test_embeddings @ bank.T
        else:
            distances = np.sqrt(np.maximum(
                (test_embeddings**2).sum(1)[:, None] - 2 * test_embeddings @ bank.T + (bank**2).sum(1)[None], 0
            ))
        nearest = np.sort(distances, axis=1)[:, : min(k, len(bank))]
        scores = nearest.mean(axis=1)
        is_anomaly = test_labels != label
        if is_anomaly.all() or not is_anomaly.any():
            continue
        per_class[int(label)] = float(roc_auc_score(is_anomaly, scores))
    return {"per_class": per_class, "mean": float(np.mean(list(per_class.values()))) if per_class else float("nan")}
