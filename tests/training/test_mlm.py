"""Tests of BERT-style token masking and the masked language model method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.config import TrainConfig
from training.data import TextDataset
from training.methods.mlm import FIRST_ORDINARY_ID, MaskedLanguageModel, mask_tokens
from training.methods.text import text_architecture
from training.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, train_tokenizer

VOCAB = 1000
TEXTS = [
    "a library for parsing json documents",
    "command line tool to convert images",
    "development files of the library",
    "fonts for latin greek and cyrillic scripts",
] * 10


def large_batch(rows: int = 400, length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ids (rows, length) of [CLS] tokens [SEP] [PAD]... with varied lengths, and the mask."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(FIRST_ORDINARY_ID, VOCAB, (rows, length), generator=generator)
    lengths = torch.randint(3, length + 1, (rows,), generator=generator)
    positions = torch.arange(length).unsqueeze(0)
    mask = positions < lengths.unsqueeze(1)
    input_ids[:, 0] = CLS_ID
    input_ids[torch.arange(rows), lengths - 1] = SEP_ID
    input_ids[~mask] = PAD_ID
    return input_ids, mask


def test_selection_rate():
    input_ids, mask = large_batch()
    selectable = mask & (input_ids >= FIRST_ORDINARY_ID)
    masked = mask_tokens(input_ids, mask, VOCAB, 0.15, torch.Generator().manual_seed(0))
    rate = masked.selected.sum().item() / selectable.sum().item()
    assert abs(rate - 0.15) < 0.005


def test_replacement_split():
    input_ids, mask = large_batch()
    masked = mask_tokens(input_ids, mask, VOCAB, 0.15, torch.Generator().manual_seed(0))
    selected = masked.selected
    total = selected.sum().item()
    to_mask = (masked.input_ids[selected] == MASK_ID).sum().item() / total
    kept = (masked.input_ids[selected] == input_ids[selected]).sum().item() / total
    replaced = 1.0 - to_mask - kept
    assert abs(to_mask - 0.8) < 0.01
    # a random replacement equal to the original token (chance 1/995) counts as kept
    assert abs(kept - 0.1) < 0.01
    assert abs(replaced - 0.1) < 0.01


def test_random_replacements_are_ordinary_tokens():
    input_ids, mask = large_batch()
    masked = mask_tokens(input_ids, mask, VOCAB, 0.15, torch.Generator().manual_seed(0))
    changed = masked.selected & (masked.input_ids != MASK_ID) & (masked.input_ids != input_ids)
    assert changed.any()
    assert (masked.input_ids[changed] >= FIRST_ORDINARY_ID).all()


def test_special_and_padding_never_selected():
    input_ids, mask = large_batch(rows=64, length=32)
    special = (input_ids < FIRST_ORDINARY_ID) | ~mask
    for seed in range(20):
        masked = mask_tokens(input_ids, mask, VOCAB, 0.9, torch.Generator().manual_seed(seed))
        assert not masked.selected[special].any()
        assert torch.equal(masked.input_ids[special], input_ids[special])


def test_unselected_tokens_unchanged():
    input_ids, mask = large_batch(rows=64, length=32)
    masked = mask_tokens(input_ids, mask, VOCAB, 0.15, torch.Generator().manual_seed(3))
    assert torch.equal(masked.input_ids[~masked.selected], input_ids[~masked.selected])


def test_at_least_one_selected():
    input_ids = torch.tensor([[CLS_ID, 10, 11, SEP_ID]])
    masked = mask_tokens(input_ids, input_ids != PAD_ID, VOCAB, 1e-6, torch.Generator().manual_seed(0))
    assert masked.selected.sum().item() == 1


def test_same_seed_same_masks():
    input_ids, mask = large_batch(rows=16, length=32)
    first = mask_tokens(input_ids, mask, VOCAB, 0.15, torch.Generator().manual_seed(5))
    second = mask_tokens(input_ids, mask, VOCAB, 0.15, torch.Generator().manual_seed(5))
    assert torch.equal(first.input_ids, second.input_ids)
    assert torch.equal(first.selected, second.selected)


def test_mask_tokens_rejects_probability():
    input_ids, mask = large_batch(rows=2, length=8)
    with pytest.raises(ValueError, match="mask_probability"):
        mask_tokens(input_ids, mask, VOCAB, 0.0)


def make_method(**overrides) -> MaskedLanguageModel:
    config = TrainConfig(method="mlm", data="texts.txt", out="out", max_tokens=32, **overrides)
    tokenizer = train_tokenizer(TEXTS, 300, True)
    architecture = text_architecture(config, tokenizer.get_vocab_size(), None, width=32, depth=1, heads=2, dropout=0.0)
    return MaskedLanguageModel(config, tokenizer, architecture, True)


def test_loss_only_on_selected_positions():
    torch.manual_seed(0)
    method = make_method()
    dataset = TextDataset(TEXTS[:8], torch.full((8,), -1), "texts", "")
    batch = method.make_batch(dataset, torch.arange(8), torch.device("cpu"))
    loss = method.training_step(batch, torch.Generator().manual_seed(7))["loss"]

    # the same masks again, then the cross-entropy at selected positions only
    masked = mask_tokens(batch["input_ids"], batch["attention_mask"], method.vocab_size, 0.15, torch.Generator().manual_seed(7))
    states = method.encoder.token_states(masked.input_ids, batch["attention_mask"])
    logits = method.head(states, method.encoder.token_embedding.weight)  # (N, L, V)
    expected = F.cross_entropy(logits[masked.selected], batch["input_ids"][masked.selected])
    everywhere = F.cross_entropy(logits[batch["attention_mask"]], batch["input_ids"][batch["attention_mask"]])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(loss, everywhere, atol=1e-3)


def test_decoder_tied_to_embedding():
    method = make_method()
    head_shapes = [tuple(parameter.shape) for parameter in method.head.parameters()]
    assert (method.vocab_size, 32) not in head_shapes
    assert method.head.bias.shape == (method.vocab_size,)


def test_training_step_gradients_reach_embedding():
    method = make_method()
    dataset = TextDataset(TEXTS[:8], torch.full((8,), -1), "texts", "")
    batch = method.make_batch(dataset, torch.arange(8), torch.device("cpu"))
    terms = method.training_step(batch, torch.Generator().manual_seed(0))
    terms["loss"].backward()
    assert method.encoder.token_embedding.weight.grad.abs().sum() > 0
    assert 0.0 <= terms["masked_accuracy"].item() <= 1.0


def test_batch_without_ordinary_tokens():
    method = make_method()
    dataset = TextDataset(["", ""], torch.full((2,), -1), "texts", "")
    batch = method.make_batch(dataset, torch.arange(2), torch.device("cpu"))
    assert method.training_step(batch, torch.Generator().manual_seed(0))["loss"].item() == 0.0


def test_export_is_bare_encoder():
    method = make_method()
    (spec,) = method.export_specs()
    assert spec.encoder is method.encoder
    assert spec.modality == "text"
    assert spec.preprocessing == {"tokenizer": "tokenizer.json", "max_tokens": 32, "lowercase": True}
    assert spec.tokenizer_json == method.tokenizer.to_str()


def test_rejects_embedding_dim():
    config = TrainConfig(method="mlm", data="texts.txt", out="out", embedding_dim=16)
    dataset = TextDataset(TEXTS, torch.full((len(TEXTS),), -1), "texts", "")
    with pytest.raises(ValueError, match="embedding-dim"):
        MaskedLanguageModel.from_data(config, dataset)


def test_rejects_mlm_probability():
    with pytest.raises(ValueError, match="mlm_probability"):
        make_method(mlm_probability=1.5)
