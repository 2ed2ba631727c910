"""Tests of the InfoNCE loss and the unsupervised SimCSE method."""

from __future__ import annotations

import math

import pytest
import torch

from training.artifact import export_artifact
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.data import TextDataset
from training.losses import InfoNCELoss, info_nce
from training.methods.mlm import MaskedLanguageModel
from training.methods.simcse import SimCSE

TEXTS = [
    "a library for parsing json documents",
    "command line tool to convert images",
    "development files of the library",
    "fonts for latin greek and cyrillic scripts",
    "python module for numerical computing",
    "documentation of the library in html",
] * 8


def reference_info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> float:
    """Compute InfoNCE with Python loops over the batch."""
    total = 0.0
    for i in range(len(queries)):
        scores = []
        for j in range(len(keys)):
            cosine = float(queries[i] @ keys[j]) / (float(queries[i].norm()) * float(keys[j].norm()))
            scores.append(cosine / temperature)
        total += -scores[i] + math.log(sum(math.exp(score) for score in scores))
    return total / len(queries)


def text_dataset(texts: list[str] = TEXTS) -> TextDataset:
    return TextDataset(list(texts), torch.full((len(texts),), -1), "texts", "")


def test_info_nce_matches_loop():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    keys = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    for temperature in (0.05, 0.5, 2.0):
        assert info_nce(queries, keys, temperature).item() == pytest.approx(reference_info_nce(queries, keys, temperature), rel=1e-9)


def test_info_nce_exact_for_identical_views():
    # orthonormal embeddings: the positive scores 1/t, each of the N-1 negatives 0
    batch, temperature = 4, 0.1
    views = torch.eye(batch, dtype=torch.float64)
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + batch - 1))
    assert info_nce(views, views.clone(), temperature).item() == pytest.approx(expected, rel=1e-12)


def test_info_nce_ignores_scale():
    generator = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    assert torch.allclose(info_nce(queries, keys, 0.1), info_nce(3 * queries, 0.5 * keys, 0.1), atol=1e-6)


def test_info_nce_rejects_bad_arguments():
    with pytest.raises(ValueError, match="both be"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3), torch.randn(4, 3), 0.0)
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=-1.0)


def small_config(tmp_path, **overrides) -> TrainConfig:
    values = {
        "method": "simcse", "data": "texts.txt", "out": str(tmp_path / "out"), "vocab_size": 300,
        "max_tokens": 24, "encoder_width": 32, "encoder_depth": 1, "heads": 2,
    }
    return TrainConfig(**{**values, **overrides})


def test_default_temperature(tmp_path):
    method = SimCSE.from_data(small_config(tmp_path), text_dataset())
    assert method.temperature == 0.05


def test_training_step_two_dropout_passes(tmp_path):
    torch.manual_seed(0)
    method = SimCSE.from_data(small_config(tmp_path), text_dataset())
    batch = method.make_batch(text_dataset(), torch.arange(6), torch.device("cpu"))
    method.train()
    loss = method.training_step(batch, torch.Generator().manual_seed(0))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() > 0.0
    assert method.encoder.token_embedding.weight.grad.abs().sum() > 0


def test_rejects_zero_dropout(tmp_path):
    config = small_config(tmp_path, extra={"text_dropout": 0.0})
    with pytest.raises(ValueError, match="dropout"):
        SimCSE.from_data(config, text_dataset())


def test_rejects_image_encoder(tmp_path):
    with pytest.raises(ValueError, match="text_transformer"):
        SimCSE.from_data(small_config(tmp_path, encoder="resnet"), text_dataset())


def export_mlm(tmp_path) -> tuple[MaskedLanguageModel, str]:
    """Build a tiny MLM method and export its encoder as an artifact; return both."""
    mlm = MaskedLanguageModel.from_data(small_config(tmp_path, method="mlm"), text_dataset())
    (spec,) = mlm.export_specs()
    meta = {
        "name": "mlm", "modality": "text", "architecture": spec.architecture, "embedding_dim": spec.embedding_dim,
        "preprocessing": spec.preprocessing, "method": "mlm", "space": "mlm",
    }
    path = export_artifact(tmp_path / "mlm", spec.encoder, meta, spec.tokenizer_json)
    return mlm, str(path)


def test_init_from_artifact(tmp_path):
    mlm, path = export_mlm(tmp_path)
    simcse = SimCSE.from_data(small_config(tmp_path, init_from=path, embedding_dim=16), text_dataset(["other words"] * 4))
    assert simcse.tokenizer.to_str() == mlm.tokenizer.to_str()
    assert torch.equal(simcse.encoder.token_embedding.weight, mlm.encoder.token_embedding.weight)
    assert torch.equal(simcse.encoder.blocks[0].mlp[0].weight, mlm.encoder.blocks[0].mlp[0].weight)
    assert simcse.embedding_dim == 16


def test_init_from_checkpoint(tmp_path):
    mlm = MaskedLanguageModel.from_data(small_config(tmp_path, method="mlm", lowercase=False), text_dataset())
    state = {"method": mlm.state_dict(), "method_extra": mlm.extra_state_for_checkpoint(), "step": 1}
    checkpoint = save_checkpoint(tmp_path / "run", 1, state, keep=1)
    simcse = SimCSE.from_data(small_config(tmp_path, init_from=str(checkpoint)), text_dataset())
    assert torch.equal(simcse.encoder.token_embedding.weight, mlm.encoder.token_embedding.weight)
    assert simcse.lowercase is False


def test_init_from_missing_path(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        SimCSE.from_data(small_config(tmp_path, init_from=str(tmp_path / "missing")), text_dataset())


def test_init_from_image_checkpoint(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "run", 1, {"method": {}, "method_extra": {}}, keep=1)
    with pytest.raises(ValueError, match="text method"):
        SimCSE.from_data(small_config(tmp_path, init_from=str(checkpoint)), text_dataset())


def test_extra_state_round_trip(tmp_path):
    method = SimCSE.from_data(small_config(tmp_path), text_dataset())
    other = SimCSE.from_data(small_config(tmp_path), text_dataset())
    other.load_extra_state(method.extra_state_for_checkpoint())
    assert other.tokenizer.to_str() == method.tokenizer.to_str()


def test_extra_state_rejects_other_vocabulary(tmp_path):
    method = SimCSE.from_data(small_config(tmp_path), text_dataset())
    smaller = SimCSE.from_data(small_config(tmp_path), text_dataset(["tiny"] * 3))
    with pytest.raises(ValueError, match="tokens"):
        smaller.load_extra_state(method.extra_state_for_checkpoint())


def test_init_replaces_head_of_other_width(tmp_path):
    first = SimCSE.from_data(small_config(tmp_path, embedding_dim=16), text_dataset())
    (spec,) = first.export_specs()
    meta = {
        "name": "sc", "modality": "text", "architecture": spec.architecture, "embedding_dim": spec.embedding_dim,
        "preprocessing": spec.preprocessing, "method": "simcse", "space": "sc",
    }
    path = export_artifact(tmp_path / "sc", spec.encoder, meta, spec.tokenizer_json)
    second = SimCSE.from_data(small_config(tmp_path, init_from=str(path), embedding_dim=8), text_dataset())
    assert second.embedding_dim == 8
    assert torch.equal(second.encoder.token_embedding.weight, first.encoder.token_embedding.weight)


def test_init_from_unreadable_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        SimCSE.from_data(small_config(tmp_path, init_from=str(path)), text_dataset())
