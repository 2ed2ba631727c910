"""Zero-shot classification with an image-text pair (Radford et al., 2021, CLIP).

Each class is described by a prompt (``the letter A``, ``the letter B``, ...). An image is
assigned the class whose prompt embedding has the highest cosine similarity with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from training.artifact import Artifact
from training.captions import class_prompts
from training.data import ImageDataset, TextDataset
from training.evaluate import l2_normalize

DEFAULT_PROMPT = "the letter {letter}"


def zero_shot_accuracy(image_embeddings: np.ndarray, labels: np.ndarray, prompt_embeddings: np.ndarray) -> float:
    """Return the share of labelled images (N, D) whose most similar prompt (K, D) is their label's.

    Prompt k describes class k; images labelled -1 are left out.
    """
    if image_embeddings.ndim != 2 or prompt_embeddings.ndim != 2 or image_embeddings.shape[1] != prompt_embeddings.shape[1]:
        raise ValueError(
            f"image embeddings (N, D) and prompt embeddings (K, D) must share D, got "
            f"{image_embeddings.shape} and {prompt_embeddings.shape}"
        )
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError("zero-shot accuracy needs labelled images")
    if labels.max() >= len(prompt_embeddings):
        raise ValueError(f"label {int(labels.max())} has no prompt; got {len(prompt_embeddings)} prompts")
    similarity = l2_normalize(image_embeddings[labelled]) @ l2_normalize(prompt_embeddings).T  # (N, K)
    return float((similarity.argmax(axis=1) == labels[labelled]).mean())


def evaluate_zero_shot(
    image_artifact: Artifact, text_artifact: Artifact, dataset: ImageDataset, prompt: str = DEFAULT_PROMPT
) -> dict[str, Any]:
    """Return zero-shot top-1 accuracy of ``image_artifact`` on ``dataset`` with prompts from ``text_artifact``.

    ``prompt`` is a template over ``label`` and ``letter`` (see training.captions); one
    prompt per class 0..max label. Raises ValueError unless the two artifacts are an
    image and a text model of one space.
    """
    from training.inference import embed_images, embed_texts

    if image_artifact.meta.modality != "image" or text_artifact.meta.modality != "text":
        raise ValueError(
            f"zero-shot needs an image and a text artifact, got {image_artifact.meta.modality} and {text_artifact.meta.modality}"
        )
    if image_artifact.meta.space != text_artifact.meta.space:
        raise ValueError(
            f"artifacts {image_artifact.meta.name!r} and {text_artifact.meta.name!r} are in different spaces "
            f"({image_artifact.meta.space!r} and {text_artifact.meta.space!r}); their embeddings are not comparable"
        )
    labels = dataset.labels.numpy()
    prompts = class_prompts(prompt, int(labels.max()) + 1)
    prompt_data = TextDataset(prompts, torch.arange(len(prompts)), "prompts", "")
    accuracy = zero_shot_accuracy(embed_images(image_artifact, dataset), labels, embed_texts(text_artifact, prompt_data))
    return {"zero_shot_top1": accuracy, "zero_shot_prompt": prompt, "zero_shot_classes": len(prompts)}
