import math

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from training.evaluate import (
    embedding_spread,
    few_shot_probe_accuracy,
    knn_accuracy,
    linear_probe_accuracy,
    one_class_auroc,
)


def clustered_data(
    seed: int, samples: int = 120, dim: int = 8, classes: int = 4, noise: float = 1.5
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=samples)
    centres = np.random.default_rng(1000).normal(size=(classes, dim))
    return centres[labels] + rng.normal(scale=noise, size=(samples, dim)), labels


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_uniform_matches_scikit_learn(k):
    train, train_labels = clustered_data(0)
    test, test_labels = clustered_data(1)
    classifier = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="uniform", algorithm="brute")
    expected = classifier.fit(train, train_labels).score(test, test_labels)
    assert knn_accuracy(train, train_labels, test, test_labels, k=k, weighted=False) == pytest.approx(expected)


def test_knn_weighted_votes_favour_close_neighbour():
    # One neighbour of class 0 at similarity 1 outweighs two of class 1 at similarity 0.6.
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    train_labels = np.array([0, 1, 1])
    test, test_labels = np.array([[1.0, 0.0]]), np.array([0])
    assert knn_accuracy(train, train_labels, test, test_labels, k=3, weighted=True) == 1.0
    assert knn_accuracy(train, train_labels, test, test_labels, k=3, weighted=False) == 0.0


def test_knn_leaves_out_unlabelled_samples():
    train, train_labels = clustered_data(0)
    test, test_labels = clustered_data(1)
    marked_train, marked_test = train_labels.copy(), test_labels.copy()
    marked_train[::3] = -1
    marked_test[::4] = -1
    expected = knn_accuracy(train[marked_train >= 0], train_labels[marked_train >= 0], test[marked_test >= 0], test_labels[marked_test >= 0])
    assert knn_accuracy(train, marked_train, test, marked_test) == expected


def test_knn_without_labels_raises():
    train, _ = clustered_data(0)
    with pytest.raises(ValueError, match="labelled"):
        knn_accuracy(train, np.full(len(train), -1), train, np.zeros(len(train), dtype=int))


def hand_auroc(normal_scores: list[float], anomaly_scores: list[float]) -> float:
    """Return P(anomaly score > normal score) + 0.5 P(tie), over all pairs."""
    wins = 0.0
    for anomaly in anomaly_scores:
        for normal in normal_scores:
            if anomaly > normal:
                wins += 1.0
            elif anomaly == normal:
                wins += 0.5
    return wins / (len(normal_scores) * len(anomaly_scores))


def test_one_class_auroc_matches_hand_computation():
    train = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]])
    train_labels = np.array([0, 0, 1, 1])
    test = np.array([[0.5, 0.0], [3.0, 0.0], [9.0, 0.0], [12.0, 0.0]])
    test_labels = np.array([0, 0, 1, 1])
    result = one_class_auroc(train, train_labels, test, test_labels, k=2, metric="l2")
    # class 0's bank is {0, 1}: mean distance of the 2 nearest bank samples
    scores_0 = [0.5, (3.0 + 2.0) / 2, (9.0 + 8.0) / 2, (12.0 + 11.0) / 2]
    # class 1's bank is {10, 11}
    scores_1 = [(9.5 + 10.5) / 2, (7.0 + 8.0) / 2, (1.0 + 2.0) / 2, (2.0 + 1.0) / 2]
    expected_0 = hand_auroc(scores_0[:2], scores_0[2:])
    expected_1 = hand_auroc(scores_1[2:], scores_1[:2])
    assert result["per_class"][0] == pytest.approx(expected_0)
    assert result["per_class"][1] == pytest.approx(expected_1)
    assert result["mean"] == pytest.approx((expected_0 + expected_1) / 2)


def test_one_class_auroc_counts_ties_as_half():
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    train_labels = np.array([0, 1])
    test = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    test_labels = np.array([0, 0, 1, 1])
    scores_0 = [1.0, 1.0, 1.0, 10.0]
    result = one_class_auroc(train, train_labels, test, test_labels, k=1, metric="l2")
    assert result["per_class"][0] == pytest.approx(hand_auroc(scores_0[:2], scores_0[2:]))


def test_one_class_auroc_single_test_class_has_no_mean():
    train = np.array([[0.0, 1.0], [1.0, 0.0]])
    result = one_class_auroc(train, np.array([0, 1]), train, np.array([0, 0]))
    assert result["per_class"] == {}
    assert result["mean"] is None


def test_one_class_auroc_rejects_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric 'dot'"):
        one_class_auroc(np.ones((2, 2)), np.array([0, 1]), np.ones((2, 2)), np.array([0, 1]), metric="dot")


def test_linear_probe_separates_clusters():
    train, train_labels = clustered_data(0, samples=200, noise=0.3)
    test, test_labels = clustered_data(1, samples=200, noise=0.3)
    assert linear_probe_accuracy(train, train_labels, test, test_labels) > 0.9


def test_linear_probe_needs_two_classes():
    train, _ = clustered_data(0)
    with pytest.raises(ValueError, match="2 classes"):
        linear_probe_accuracy(train, np.zeros(len(train), dtype=int), train, np.zeros(len(train), dtype=int))


def test_few_shot_probe_uses_shots_per_class():
    train, train_labels = clustered_data(0, samples=200)
    test, test_labels = clustered_data(0, samples=200)
    mean, std = few_shot_probe_accuracy(train, train_labels, test, test_labels, shots=5, draws=3)
    assert 0.0 <= mean <= 1.0
    assert std >= 0.0


def test_embedding_spread_isotropic_is_near_reference():
    embeddings = np.random.default_rng(0).normal(size=(4000, 16))
    spread = embedding_spread(embeddings)
    assert spread["collapse_reference"] == pytest.approx(1 / math.sqrt(16))
    assert spread["embedding_std"] == pytest.approx(spread["collapse_reference"], rel=0.05)
    assert spread["embedding_effective_rank"] > 15


def test_embedding_spread_collapsed_is_near_zero():
    rng = np.random.default_rng(0)
    embeddings = np.abs(rng.normal(size=(1, 16))) + 1e-4 * rng.normal(size=(500, 16))
    assert embedding_spread(embeddings)["embedding_std"] < 1e-3


def test_embedding_spread_effective_rank_sees_dimensional_collapse():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(500, 2)) @ rng.normal(size=(2, 16))
    assert embedding_spread(embeddings)["embedding_effective_rank"] < 2.01
