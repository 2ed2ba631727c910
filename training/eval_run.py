"""What ``ssl-eval`` runs: embed reference and evaluation data, then compute every metric."""

from __future__ import annotations

import argparse
from typing import Any


import torch

from training.artifact import load_artifact
from training.data import is_text_source, load_image_dataset, load_text_dataset, split_holdout
from training.evaluate import few_shot_probe_accuracy, knn_accuracy, linear_probe_accuracy, one_class_auroc
from training.inference import embed_images, embed_texts
from training.trainer import resolve_device


def evaluate_artifact(args: argparse.Namespace) -> dict[str, Any]:
    """Return kNN, linear-probe, few-label probe and one-class AUROC metrics as a dict."""
    artifact = load_artifact(args.artifact, resolve_device(args.device))
    reference, evaluation = _load_splits(args, artifact.meta.modality)
    embed = embed_texts if artifact.meta.modality == "text" else embed_images
    reference_embeddings = embed(artifact, reference)
    evaluation_embeddings = embed(artifact, evaluation)
    reference_labels = reference.labels.numpy()
    evaluation_labels = evaluation.labels.numpy()

    metrics: dict[str, Any] = {
        "model": artifact.meta.name,
        "data": args.data,
        "reference_samples": len(reference),
        "evaluation_samples": len(evaluation),
    }
    if (reference_labels >= 0).sum() == 0 or (evaluation_labels >= 0).sum() == 0:
        metrics["note"] = "no labels: supervised metrics skipped"
        return metrics
    metrics[f"knn_top1_k{args.k}"] = knn_accuracy(reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, k=args.k)
    metrics["linear_probe"] = linear_probe_accuracy(reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels)
    mean, std = few_shot_probe_accuracy(
        reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, shots=args.shots, draws=args.draws
    )
    metrics[f"linear_probe_{args.shots}_per_class"] = mean
    metrics[f"linear_probe_{args.shots}_per_class_std"] = std
    auroc = one_class_auroc(reference_embeddings, reference_labels, evaluation_embeddings, evaluation_labels, k=args.anomaly_k)
    metrics["one_class_auroc_mean"] = auroc["mean"]
    metrics["one_class_auroc"] = auroc["per_class"]
    return metrics


def _load_splits(args: argparse.Namespace, modality: str) -> tuple[Any, Any]:
    def load(spec: str) -> Any:
        if modality == "text":
            if not is_text_source(spec):
                raise ValueError(f"a text model needs .txt or .jsonl(.gz) data, got {spec!r}")
            return load_text_dataset(spec, args.text_field, args.labels)
        return load_image_dataset(spec)

    evaluation = load(args.data)
    if args.limit:
        evaluation = evaluation.subset(torch.arange(min(args.limit, len(evaluation))))
    if args.train_data:
        reference = load(args.train_data)
        if args.limit:
            reference = reference.subset(torch.arange(min(args.limit, len(reference))))
        return reference, evaluation
    reference_indices, evaluation_indices = split_holdout(evaluation.labels, 0.5, args.seed)
    if len(evaluation_indices) == 0:
        return evaluation, evaluation
    return evaluation.subset(reference_indices), evaluation.subset(evaluation_indices)



