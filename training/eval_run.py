"""What ``ssl-eval`` runs: embed reference and evaluation data, then compute every metric.

Supervised metrics use only labelled samples, and label -1 means unknown. A metric that
the labels cannot support is left out and named under ``skipped`` with the reason, so
unlabelled data yields a valid result instead of an error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.artifact import Artifact, ArtifactError, load_artifact, read_meta
from training.data import is_text_source, load_image_dataset, load_text_dataset, split_holdout
from training.distributed import resolve_device
from training.evaluate import few_shot_probe_accuracy, knn_accuracy, linear_probe_accuracy, one_class_auroc
from training.inference import embed_dataset

logger = logging.getLogger(__name__)


def evaluate_artifact(args: argparse.Namespace) -> dict[str, Any]:
    """Return kNN, linear-probe, few-label probe, one-class AUROC and optional zero-shot and fine-tune metrics."""
    device = resolve_device(args.device)
    artifact = load_artifact(args.artifact, device)
    reference, evaluation = _load_splits(args, artifact.meta.modality)
    reference_embeddings = embed_dataset(artifact, reference)
    evaluation_embeddings = embed_dataset(artifact, evaluation)
    reference_labels = reference.labels.numpy()
    evaluation_labels = evaluation.labels.numpy()

    metrics: dict[str, Any] = {
        "model": artifact.meta.name,
        "data": args.data,
        "reference_samples": len(reference),
        "evaluation_samples": len(evaluation),
        "labelled_reference_samples": int((reference_labels >= 0).sum()),
        "labelled_evaluation_samples": int((evaluation_labels >= 0).sum()),
    }
    skipped: dict[str, str] = {}
    metrics.update(supervised_metrics(reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, args, skipped))
    if artifact.meta.modality == "image":
        metrics.update(_zero_shot(args, artifact, evaluation, skipped))
    if args.fine_tune:
        metrics.update(_fine_tune(args, artifact, reference, evaluation, skipped))
    if skipped:
        metrics["skipped"] = skipped
    return metrics


def supervised_metrics(
    reference_embeddings: np.ndarray,
    reference_labels: np.ndarray,
    evaluation_embeddings: np.ndarray,
    evaluation_labels: np.ndarray,
    args: argparse.Namespace,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """Return the label-based metrics; each one the labels cannot support is recorded in ``skipped``."""
    reference_classes = np.unique(reference_labels[reference_labels >= 0])
    evaluation_classes = np.unique(evaluation_labels[evaluation_labels >= 0])
    knn_name = f"knn_top1_k{args.k}"
    probe_name = f"linear_probe_{args.shots}_per_class"
    names = (knn_name, "linear_probe", probe_name, "one_class_auroc_mean")
    if len(reference_classes) == 0 or len(evaluation_classes) == 0:
        skipped.update(dict.fromkeys(names, "no labelled reference or evaluation samples"))
        return {}

    metrics: dict[str, Any] = {
        knn_name: knn_accuracy(reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, k=args.k)
    }
    if len(reference_classes) < 2:
        skipped.update(dict.fromkeys((names[1], names[2]), "linear probes need labelled reference samples of 2 classes"))
    else:
        metrics["linear_probe"] = linear_probe_accuracy(
            reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels
        )
        mean, std = few_shot_probe_accuracy(
            reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, shots=args.shots, draws=args.draws
        )
        metrics[probe_name] = mean
        metrics[f"{probe_name}_std"] = std

    auroc = one_class_auroc(reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, k=args.anomaly_k)
    if auroc["mean"] is None:
        skipped["one_class_auroc_mean"] = "needs evaluation samples of 2 classes or more that the reference also holds"
    else:
        metrics["one_class_auroc_mean"] = auroc["mean"]
        metrics["one_class_auroc"] = {str(label): value for label, value in auroc["per_class"].items()}
    return metrics


def _zero_shot(args: argparse.Namespace, artifact: Artifact, evaluation: Any, skipped: dict[str, str]) -> dict[str, Any]:
    """Return zero-shot accuracy when a text model shares the image model's space."""
    text_path = Path(args.text_model) if args.text_model else find_text_partner(artifact)
    if text_path is None:
        return {}
    if not bool((evaluation.labels >= 0).any()):
        skipped["zero_shot_top1"] = "no labelled evaluation samples"
        return {}
    from training.zero_shot import DEFAULT_PROMPT, evaluate_zero_shot

    text_artifact = load_artifact(text_path, next(artifact.encoder.parameters()).device)
    labelled = evaluation.subset(torch.nonzero(evaluation.labels >= 0).squeeze(1))
    result = evaluate_zero_shot(artifact, text_artifact, labelled, args.prompt or DEFAULT_PROMPT)
    result["zero_shot_text_model"] = text_artifact.meta.name
    return result


def find_text_partner(artifact: Artifact) -> Path | None:
    """Return the folder of a text artifact beside ``artifact`` in the same space, if there is one."""
    for candidate in sorted(artifact.path.parent.iterdir()):
        if candidate == artifact.path or not (candidate / "model.json").is_file():
            continue
        try:
            meta = read_meta(candidate)
        except ArtifactError as error:
            logger.debug("skipping %s while looking for a text model: %s", candidate, error)
            continue
        if meta.modality == "text" and meta.space == artifact.meta.space:
            return candidate
    return None


def _fine_tune(
    args: argparse.Namespace, artifact: Artifact, reference: Any, evaluation: Any, skipped: dict[str, str]
) -> dict[str, Any]:
    from training.fine_tune import FineTuneSettings, fine_tune

    settings = FineTuneSettings(
        mode=args.fine_tune, epochs=args.fine_tune_epochs, lr=args.fine_tune_lr, batch_size=args.batch_size, seed=args.seed
    )
    try:
        return fine_tune(artifact, reference, evaluation, settings)
    except ValueError as error:
        skipped["fine_tune_top1"] = str(error)
        return {}


def _load_splits(args: argparse.Namespace, modality: str) -> tuple[Any, Any]:
    """Return (reference, evaluation): ``--train-data`` and ``--data``, or halves of ``--data``.

    Without ``--train-data``, half of the labelled samples of ``--data`` (seeded by
    ``--seed``) are evaluated and the rest, unlabelled ones included, are the reference.
    """
    def load(spec: str) -> Any:
        if modality == "text":
            if not is_text_source(spec):
                raise ValueError(f"a text model needs .txt or .jsonl(.gz) data, got {spec!r}")
            return load_text_dataset(spec, args.text_field, args.labels)
        return load_image_dataset(spec)

    evaluation = _limited(load(args.data), args.limit)
    if args.train_data:
        return _limited(load(args.train_data), args.limit), evaluation
    reference_indices, evaluation_indices = split_holdout(evaluation.labels, 0.5, args.seed)
    if len(evaluation_indices) == 0:
        return evaluation, evaluation
    return evaluation.subset(reference_indices), evaluation.subset(evaluation_indices)


def _limited(dataset: Any, limit: int | None) -> Any:
    if limit is None:
        return dataset
    return dataset.subset(torch.arange(min(limit, len(dataset))))
