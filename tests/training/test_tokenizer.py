"""Tests of the byte-level BPE tokenizer and batch tokenisation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from training.artifact import export_artifact, load_artifact
from training.encoders.text import TextTransformer
from training.tokenizer import (
    CLS_ID,
    MASK_ID,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    check_tokenizer,
    tokenize_batch,
    train_tokenizer,
)

CORPUS = [
    "A library for parsing JSON documents quickly.",
    "Command-line tool to convert images between formats.",
    "This package contains the development files of the library.",
    "Fonts for the Latin, Greek and Cyrillic scripts.",
    "Python module for numerical computing with arrays.",
    "Documentation in HTML format for the library.",
] * 20

HARD_TEXTS = [
    "",
    "emoji 😀🚀 and flags 🇩🇪",
    "漢字かな交じり文 中文 한국어",
    "control \x00\x01\x07\x1b[31m characters\x7f",
    "windows\r\nline\rends\n",
    "   ",
    "\t",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=400, lowercase=True)


def test_special_token_ids(tokenizer):
    for expected, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) == (0, 1, 2, 3, 4)


def test_encoding_wraps_cls_and_sep(tokenizer):
    ids = tokenize_batch(tokenizer, ["a library"], 32, True).input_ids[0].tolist()
    assert ids[0] == CLS_ID
    assert ids[-1] == SEP_ID


def test_hard_texts_encode_without_unknown(tokenizer):
    batch = tokenize_batch(tokenizer, HARD_TEXTS, 512, False)
    assert batch.input_ids.shape[0] == len(HARD_TEXTS)
    assert not (batch.input_ids == UNK_ID).any()
    for row, length in enumerate(batch.lengths):
        assert batch.input_ids[row, 0] == CLS_ID
        assert batch.input_ids[row, length - 1] == SEP_ID


def test_empty_text_is_cls_sep(tokenizer):
    batch = tokenize_batch(tokenizer, [""], 8, True)
    assert batch.input_ids.tolist() == [[CLS_ID, SEP_ID]]
    assert batch.lengths == [2]


def test_emoji_and_cjk_round_trip(tokenizer):
    for text in ("emoji 😀🚀", "漢字かな 中文 한국어"):
        ids = tokenize_batch(tokenizer, [text], 512, False).input_ids[0].tolist()
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == text


def test_lone_surrogate_is_replaced(tokenizer):
    batch = tokenize_batch(tokenizer, ["broken \ud800 text"], 64, False)
    decoded = tokenizer.decode(batch.input_ids[0].tolist(), skip_special_tokens=True)
    assert "\ufffd" in decoded


def test_truncation_keeps_cls_and_sep(tokenizer):
    batch = tokenize_batch(tokenizer, ["library " * 100, "short"], 10, True)
    assert batch.input_ids.shape == (2, 10)
    assert batch.input_ids[0, 0] == CLS_ID
    assert batch.input_ids[0, -1] == SEP_ID
    assert batch.truncated == [True, False]
    assert batch.lengths[0] == 10


def test_truncated_prefix_matches_full_encoding(tokenizer):
    text = "python module for numerical computing " * 10
    full = tokenize_batch(tokenizer, [text], 512, True).input_ids[0]
    cut = tokenize_batch(tokenizer, [text], 12, True).input_ids[0]
    assert torch.equal(cut[:11], full[:11])


def test_padding_to_longest(tokenizer):
    batch = tokenize_batch(tokenizer, ["a", "a library for parsing json", ""], 64, True)
    longest = max(batch.lengths)
    assert batch.input_ids.shape == (3, longest)
    assert batch.attention_mask.dtype == torch.bool
    assert batch.input_ids.dtype == torch.long
    assert batch.attention_mask.sum(dim=1).tolist() == batch.lengths
    assert (batch.input_ids[~batch.attention_mask] == PAD_ID).all()


def test_lowercase_flag(tokenizer):
    lower = tokenize_batch(tokenizer, ["Library"], 16, True).input_ids
    folded = tokenize_batch(tokenizer, ["LIBRARY"], 16, True).input_ids
    assert torch.equal(lower, folded)


def test_tokenize_leaves_tokenizer_unchanged(tokenizer):
    tokenize_batch(tokenizer, ["library " * 50, "a"], 8, True)
    assert tokenizer.truncation is None
    assert tokenizer.padding is None


def test_tokenize_from_threads(tokenizer):
    texts = [CORPUS[i % len(CORPUS)] * (1 + i % 4) for i in range(64)]
    expected = tokenize_batch(tokenizer, texts, 24, True).input_ids
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: tokenize_batch(tokenizer, texts, 24, True).input_ids, range(8)))
    for result in results:
        assert torch.equal(result, expected)


def test_tokenize_rejects_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_batch(tokenizer, ["a"], 1, True)
    with pytest.raises(ValueError, match="sequence of str"):
        tokenize_batch(tokenizer, "a text", 8, True)
    with pytest.raises(ValueError, match="sequence of str"):
        tokenize_batch(tokenizer, [b"bytes"], 8, True)
    with pytest.raises(ValueError, match="at least one"):
        tokenize_batch(tokenizer, [], 8, True)


def test_train_rejects_small_vocab():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(CORPUS, vocab_size=100, lowercase=True)


def test_vocab_never_exceeds_request(tokenizer):
    assert tokenizer.get_vocab_size() <= 400


def test_check_tokenizer_accepts_trained(tokenizer):
    check_tokenizer(tokenizer)


def test_artifact_round_trip(tokenizer, tmp_path):
    encoder = TextTransformer(vocab_size=tokenizer.get_vocab_size(), max_tokens=32, width=32, depth=1, heads=2).eval()
    meta = {
        "name": "tiny-text",
        "modality": "text",
        "architecture": {"name": "text_transformer", "kwargs": {"vocab_size": tokenizer.get_vocab_size(), "max_tokens": 32, "width": 32, "depth": 1, "heads": 2}},
        "embedding_dim": 32,
        "preprocessing": {"tokenizer": "tokenizer.json", "max_tokens": 32, "lowercase": True},
        "method": "simcse",
        "space": "tiny-text",
    }
    export_artifact(tmp_path / "tiny-text", encoder, meta, tokenizer.to_str())
    artifact = load_artifact(tmp_path / "tiny-text")

    texts = ["A library for JSON", "emoji 😀", "", "control\x00\r\n"]
    original = tokenize_batch(tokenizer, texts, 32, True)
    loaded = tokenize_batch(artifact.tokenizer, texts, 32, True)
    assert torch.equal(original.input_ids, loaded.input_ids)
    with torch.no_grad():
        expected = encoder(original.input_ids, original.attention_mask)
        actual = artifact.encoder(loaded.input_ids, loaded.attention_mask)
    assert torch.equal(expected, actual)
