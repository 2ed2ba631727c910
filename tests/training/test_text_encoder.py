"""Tests of the text transformer and the projected wrapper encoder."""

from __future__ import annotations

import json

import pytest
import torch

from training.encoders import build_encoder
from training.encoders.projected import ProjectedEncoder
from training.encoders.text import TextTransformer
from training.tokenizer import CLS_ID, PAD_ID, SEP_ID

KWARGS = {"vocab_size": 50, "max_tokens": 24, "width": 32, "depth": 2, "heads": 4, "dropout": 0.1}


def make_batch(lengths: list[int], pad_to: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return [CLS] random tokens [SEP] sequences (N, L) padded with [PAD], and their mask."""
    generator = torch.Generator().manual_seed(seed)
    width = pad_to or max(lengths)
    input_ids = torch.full((len(lengths), width), PAD_ID)
    for row, length in enumerate(lengths):
        input_ids[row, 0] = CLS_ID
        input_ids[row, 1 : length - 1] = torch.randint(5, 50, (length - 2,), generator=generator)
        input_ids[row, length - 1] = SEP_ID
    return input_ids, input_ids != PAD_ID


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return TextTransformer(**KWARGS).eval()


def test_output_shape(encoder):
    input_ids, mask = make_batch([5, 9, 2])
    assert encoder(input_ids, mask).shape == (3, 32)


def test_token_states_shape(encoder):
    input_ids, mask = make_batch([5, 9])
    assert encoder.token_states(input_ids, mask).shape == (2, 9, 32)


def test_projection_width():
    encoder = TextTransformer(**KWARGS, embedding_dim=12).eval()
    input_ids, mask = make_batch([4, 6])
    assert encoder(input_ids, mask).shape == (2, 12)
    assert encoder.embedding_dim == 12


def test_padding_independence(encoder):
    input_ids, mask = make_batch([6, 3, 11])
    with torch.no_grad():
        batched = encoder(input_ids, mask)
        padded = encoder(*make_batch([6, 3, 11], pad_to=24))
        alone = torch.cat([encoder(input_ids[i : i + 1, :length], mask[i : i + 1, :length]) for i, length in enumerate([6, 3, 11])])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(batched, padded, atol=1e-5)


def test_padding_token_values_ignored(encoder):
    input_ids, mask = make_batch([4, 10])
    changed = input_ids.clone()
    changed[~mask] = 7  # any id under a False mask must not matter
    with torch.no_grad():
        assert torch.allclose(encoder(input_ids, mask), encoder(changed, mask), atol=1e-6)


def test_default_mask_from_pad_id(encoder):
    input_ids, mask = make_batch([4, 10])
    with torch.no_grad():
        assert torch.equal(encoder(input_ids), encoder(input_ids, mask))


def test_dropout_only_in_training(encoder):
    input_ids, mask = make_batch([8, 8])
    with torch.no_grad():
        assert torch.equal(encoder(input_ids, mask), encoder(input_ids, mask))
        encoder.train()
        assert not torch.equal(encoder(input_ids, mask), encoder(input_ids, mask))


def test_build_from_json_kwargs():
    kwargs = json.loads(json.dumps({**KWARGS, "embedding_dim": None, "pad_id": 0, "mlp_ratio": 2.0}))
    encoder = build_encoder("text_transformer", **kwargs)
    assert isinstance(encoder, TextTransformer)
    assert encoder.embedding_dim == 32


def test_rejects_too_many_tokens(encoder):
    input_ids, mask = make_batch([25])
    with pytest.raises(ValueError, match="max_tokens"):
        encoder(input_ids, mask)


def test_rejects_mask_shape(encoder):
    input_ids, mask = make_batch([5, 6])
    with pytest.raises(ValueError, match="attention_mask"):
        encoder(input_ids, mask[:, :3])


def test_rejects_row_without_tokens(encoder):
    input_ids, mask = make_batch([5, 6])
    mask[1] = False
    with pytest.raises(ValueError, match="real token"):
        encoder(input_ids, mask)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"width": 30, "heads": 4}, "divisible"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"max_tokens": 1}, "max_tokens"),
        ({"dropout": 1.0}, "dropout"),
        ({"pad_id": 50}, "pad_id"),
        ({"depth": 0}, "positive"),
    ],
)
def test_rejects_bad_arguments(override, message):
    with pytest.raises(ValueError, match=message):
        TextTransformer(**{**KWARGS, **override})


def test_projected_text_encoder():
    architecture = {"inner": {"name": "text_transformer", "kwargs": KWARGS}, "embedding_dim": 16}
    encoder = build_encoder("projected", **json.loads(json.dumps(architecture))).eval()
    input_ids, mask = make_batch([4, 7])
    assert encoder(input_ids, mask).shape == (2, 16)
    assert encoder.embedding_dim == 16
    assert encoder.projection.bias is None


def test_projected_image_encoder():
    inner = {"name": "resnet", "kwargs": {"in_channels": 1, "depth": 10, "width": 4, "small_stem": True}}
    encoder = build_encoder("projected", inner=inner, embedding_dim=8).eval()
    assert encoder(torch.rand(3, 1, 8, 8)).shape == (3, 8)
    assert encoder.feature_dim == 32


def test_projected_rejects_bad_inner():
    with pytest.raises(ValueError, match="architecture entry"):
        ProjectedEncoder(inner="resnet", embedding_dim=8)
    with pytest.raises(ValueError, match="projected"):
        ProjectedEncoder(inner={"name": "projected", "kwargs": {}}, embedding_dim=8)
    with pytest.raises(ValueError, match="embedding_dim"):
        ProjectedEncoder(inner={"name": "text_transformer", "kwargs": KWARGS}, embedding_dim=0)
