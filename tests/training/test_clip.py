"""Tests of the CLIP loss, its logit scale and the CLIP method end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.artifact import load_artifact
from training.config import TrainConfig
from training.data import TextDataset, load_image_dataset, split_holdout
from training.data_pairs import load_pair_dataset
from training.inference import embed_images, embed_texts
from training.losses import CLIPLoss, clip_loss
from training.methods.clip import CLIP
from training.trainer import train

TEXT_TOWER = {"text_encoder_width": 16, "text_encoder_depth": 1, "text_heads": 2}


def reference_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> float:
    """Compute the symmetric CLIP loss with Python loops over the batch."""
    count = len(images)
    similarity = [[scale * float(F.cosine_similarity(images[i], texts[j], dim=0)) for j in range(count)] for i in range(count)]
    image_to_text = sum(-similarity[i][i] + math.log(sum(math.exp(value) for value in similarity[i])) for i in range(count))
    text_to_image = sum(
        -similarity[j][j] + math.log(sum(math.exp(similarity[i][j]) for i in range(count))) for j in range(count)
    )
    return (image_to_text + text_to_image) / (2 * count)


def test_clip_loss_matches_loop():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    texts = torch.randn(6, 4, generator=generator, dtype=torch.float64)
    for scale in (1.0, 14.0, 100.0):
        assert clip_loss(images, texts, scale).item() == pytest.approx(reference_clip_loss(images, texts, scale), rel=1e-9)


def test_clip_loss_is_symmetric_in_towers():
    generator = torch.Generator().manual_seed(1)
    images, texts = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    assert torch.allclose(clip_loss(images, texts, 10.0), clip_loss(texts, images, 10.0), atol=1e-6)


def test_clip_loss_exact_for_matching_pairs():
    # orthonormal pairs: the matching pair scores s, every other pair 0, in both directions
    batch, scale = 5, 10.0
    pairs = torch.eye(batch, dtype=torch.float64)
    expected = -math.log(math.exp(scale) / (math.exp(scale) + batch - 1))
    assert clip_loss(pairs, pairs.clone(), scale).item() == pytest.approx(expected, rel=1e-12)


def test_clip_loss_rejects_shapes():
    with pytest.raises(ValueError, match="both be"):
        clip_loss(torch.randn(4, 3), torch.randn(4, 2), 1.0)


def test_logit_scale_starts_at_inverse_temperature():
    loss = CLIPLoss()
    assert loss.logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert loss.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07), rel=1e-6)


def test_logit_scale_clamped_at_100():
    loss = CLIPLoss()
    with torch.no_grad():
        loss.log_logit_scale.fill_(math.log(1000.0))
    assert loss.logit_scale().item() == pytest.approx(100.0, rel=1e-6)
    loss.clamp_()
    assert loss.log_logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)


def test_logit_scale_used_in_loss():
    generator = torch.Generator().manual_seed(2)
    images, texts = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    loss = CLIPLoss()
    with torch.no_grad():
        loss.log_logit_scale.fill_(math.log(1000.0))
    assert torch.allclose(loss(images, texts), clip_loss(images, texts, 100.0), atol=1e-6)


def test_logit_scale_learns():
    loss = CLIPLoss()
    images = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    loss(images, images.clone()).backward()
    assert loss.log_logit_scale.grad is not None
    assert loss.log_logit_scale.grad.item() != 0.0


def test_clip_loss_rejects_settings():
    with pytest.raises(ValueError, match="initial_temperature"):
        CLIPLoss(initial_temperature=0.0)
    with pytest.raises(ValueError, match="max_logit_scale"):
        CLIPLoss(max_logit_scale=-1.0)


@pytest.fixture
def glyph_npz(tmp_path):
    """Write 48 random 8x8 'glyphs' of letters A-D from 12 fonts, with a fonts.json beside them."""
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, size=(48, 8, 8), dtype=np.uint8)
    labels = np.tile(np.arange(4), 12)
    font_ids = np.repeat(np.arange(12), 4).astype(np.int32)
    np.savez(tmp_path / "glyphs.npz", images=images, labels=labels, font_ids=font_ids)
    fonts = {str(i): {"family": "Test Serif" if i % 2 else "Test Sans Mono", "style": "Bold" if i % 3 else "Italic"} for i in range(12)}
    (tmp_path / "fonts.json").write_text(json.dumps(fonts), encoding="utf-8")
    return tmp_path / "glyphs.npz"


def clip_config(tmp_path, data, **overrides) -> TrainConfig:
    values = {
        "method": "clip", "data": str(data), "out": str(tmp_path / "models" / "pair"), "caption_rule": "glyphs",
        "epochs": 1, "batch_size": 16, "encoder": "resnet", "encoder_width": 4, "encoder_depth": 10,
        "embedding_dim": 8, "vocab_size": 300, "max_tokens": 16, "holdout_fraction": 0.25,
        "extra": {**TEXT_TOWER, "run_dir": str(tmp_path / "run")},
    }
    return TrainConfig(**{**values, **overrides})


def test_make_batch_dict(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz)
    pairs = load_pair_dataset(config)
    method = CLIP.from_data(config, pairs)
    batch = method.make_batch(pairs, torch.arange(5), torch.device("cpu"))
    assert batch["images"].shape == (5, 1, 8, 8)
    assert batch["images"].dtype == torch.float32
    assert batch["images"].min() >= 0.0
    assert batch["images"].max() <= 1.0
    assert batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["input_ids"].shape == batch["attention_mask"].shape


def test_image_tower_takes_augmentation_flags(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz, crop_scale_min=0.5, shear=0.2, morphology_prob=0.4)
    method = CLIP.from_data(config, load_pair_dataset(config))
    assert method.augmentation.config.crop_scale == (0.5, 1.0)
    assert method.augmentation.config.shear == 0.2
    assert method.augmentation.config.morphology_prob == 0.4


def test_training_step_terms(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz)
    pairs = load_pair_dataset(config)
    method = CLIP.from_data(config, pairs)
    batch = method.make_batch(pairs, torch.arange(16), torch.device("cpu"))
    terms = method.training_step(batch, torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert terms["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert method.image_encoder.projection.weight.grad is not None
    assert method.text_encoder.projection.weight.grad is not None


def test_on_step_end_clamps_scale(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz)
    method = CLIP.from_data(config, load_pair_dataset(config))
    with torch.no_grad():
        method.loss.log_logit_scale.fill_(10.0)
    method.on_step_end(1, 10)
    assert method.loss.log_logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)


def test_export_specs_share_width(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz)
    method = CLIP.from_data(config, load_pair_dataset(config))
    image_spec, text_spec = method.export_specs()
    assert (image_spec.suffix, text_spec.suffix) == ("-image", "-text")
    assert (image_spec.modality, text_spec.modality) == ("image", "text")
    assert image_spec.embedding_dim == text_spec.embedding_dim == 8
    assert image_spec.architecture["name"] == text_spec.architecture["name"] == "projected"
    assert image_spec.architecture["kwargs"]["inner"]["name"] == "resnet"
    assert "embedding_dim" not in image_spec.architecture["kwargs"]["inner"]["kwargs"]
    assert text_spec.tokenizer_json == method.tokenizer.to_str()
    assert image_spec.tokenizer_json is None


def test_train_exports_pair_in_one_space(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz)
    paths = train(config, argv=["--method", "clip"])
    assert [path.name for path in paths] == ["pair-image", "pair-text"]

    image_artifact, text_artifact = load_artifact(paths[0]), load_artifact(paths[1])
    assert image_artifact.meta.space == text_artifact.meta.space == "pair"
    assert image_artifact.meta.embedding_dim == text_artifact.meta.embedding_dim == 8

    # the exported towers reproduce the trained method's embeddings. The method is rebuilt
    # on the training split because the image preprocessing stores that split's pixel statistics.
    pairs = load_pair_dataset(config)
    train_indices, _ = split_holdout(pairs.labels, config.holdout_fraction, config.seed)
    method = CLIP.from_data(config, pairs.subset(train_indices))
    checkpoint = torch.load(sorted((tmp_path / "run").glob("checkpoint-*.pt"))[-1], weights_only=True)
    method.load_state_dict(checkpoint["method"])
    method.load_extra_state(checkpoint["method_extra"])
    method.eval()
    batch = method.make_batch(pairs, torch.arange(6), torch.device("cpu"))
    images = load_image_dataset(str(glyph_npz)).subset(torch.arange(6))
    texts = TextDataset(pairs.captions[:6], torch.full((6,), -1), "captions", "")
    expected_images = F.normalize(method.embed(batch), dim=1).numpy()
    expected_texts = F.normalize(method.embed_text(batch), dim=1).numpy()
    assert np.allclose(embed_images(image_artifact, images), expected_images, atol=1e-5)
    assert np.allclose(embed_texts(text_artifact, texts), expected_texts, atol=1e-5)


def test_init_text_tower_from_checkpoint(tmp_path, glyph_npz):
    config = clip_config(tmp_path, glyph_npz)
    method = CLIP.from_data(config, load_pair_dataset(config))
    state = {"method": method.state_dict(), "method_extra": method.extra_state_for_checkpoint()}
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    warm = CLIP.from_data(clip_config(tmp_path, glyph_npz, init_from=str(path)), load_pair_dataset(config))
    assert torch.equal(warm.text_encoder.inner.token_embedding.weight, method.text_encoder.inner.token_embedding.weight)
