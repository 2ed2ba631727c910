"""Encoding long texts from a leading part gives exactly the ids of the whole text.

The reference encodes every text whole with ``Tokenizer.encode`` and cuts the ids
afterwards.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers

from training.artifact import load_artifact
from training.tokenizer import CHARS_PER_TOKEN, SEP_ID, encode_texts, reads_leading_parts, tokenize_batch, train_tokenizer

REPO = Path(__file__).resolve().parents[2]
DESCRIPTIONS = REPO.parent / "shared" / "data" / "debian-descriptions" / "test.jsonl.gz"

# Characters where a cut could go wrong: whitespace runs, no-break and other Unicode
# spaces, combining marks, a final sigma, characters whose NFKC form is several
# characters or starts with a space, contractions, surrogates and special-token text.
PIECES = [
    " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2003", "\u3000", "\u0085", "\x1f",
    "e\u0301", "\u0301", "\u0327", "ΟΔΟΣ", "Σ", "İ", "ﬁ", "\u203e", "\u00a8", "Ｆｕｌｌ", "½", "㍿",
    "it's", "'ll", "don't", "漢字", "한국어", "😀", "🇩🇪", "\ud800", "[CLS]", "[SEP]", "[MASK]",
    "library", "JSON", "parser", "x", "42", "3.14", "--", "...", "é", "Ä", "ß",
]


def reference(tokenizer: Tokenizer, texts: list[str], max_tokens: int, lowercase: bool) -> tuple[list[list[int]], list[bool]]:
    sequences, truncated = [], []
    for text in texts:
        prepared = re.sub("[\ud800-\udfff]", "\ufffd", text.lower() if lowercase else text)
        ids = tokenizer.encode(prepared, add_special_tokens=True).ids
        truncated.append(len(ids) > max_tokens)
        sequences.append(ids[: max_tokens - 1] + [SEP_ID] if len(ids) > max_tokens else ids)
    return sequences, truncated


def tricky_texts(count: int, seed: int, max_pieces: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, max_pieces))) for _ in range(count)]


@pytest.fixture(scope="module")
def shipped() -> Tokenizer:
    return load_artifact(REPO / "models" / "debian-simcse").tokenizer


@pytest.fixture(scope="module")
def small() -> Tokenizer:
    corpus = [" ".join(tricky_texts(1, seed, 30)) for seed in range(300)]
    return train_tokenizer(corpus, vocab_size=500, lowercase=False)


class RecordingTokenizer:
    """A tokenizer that records the length of every text it is asked to encode."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.tokenizer, name)

    def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> list[object]:
        self.lengths.extend(len(text) for text in texts)
        return self.tokenizer.encode_batch_fast(texts, add_special_tokens=add_special_tokens)


def test_trained_tokenizers_read_leading_parts(shipped: Tokenizer, small: Tokenizer) -> None:
    assert reads_leading_parts(shipped)
    assert reads_leading_parts(small)


@pytest.mark.parametrize("max_tokens", [2, 3, 5, 8, 16, 64])
@pytest.mark.parametrize("lowercase", [True, False])
@pytest.mark.parametrize("chars_per_token", [1, 2, CHARS_PER_TOKEN])
def test_tricky_texts_match_whole_text_encoding(
    shipped: Tokenizer, small: Tokenizer, max_tokens: int, lowercase: bool, chars_per_token: int
) -> None:
    # one or two characters per token make most first parts too short, so parts end near the cut
    texts = tricky_texts(200, seed=max_tokens, max_pieces=6 * max_tokens)
    for tokenizer in (shipped, small):
        encoded = encode_texts(tokenizer, texts, max_tokens, lowercase, chars_per_token=chars_per_token)
        assert encoded == reference(tokenizer, texts, max_tokens, lowercase)


def test_long_tokens_text_read_again(small: Tokenizer) -> None:
    # " library" is one token of 8 characters, more than CHARS_PER_TOKEN, so the first part has too few tokens
    text = "library " * 200
    recording = RecordingTokenizer(small)
    assert encode_texts(recording, [text], 16, False) == reference(small, [text], 16, False)
    assert len(recording.lengths) >= 2
    assert recording.lengths[0] < recording.lengths[1] < len(text)


def test_long_text_read_from_leading_part(shipped: Tokenizer) -> None:
    text = "a library for parsing json documents " * 30_000  # about 1.1 million characters
    recording = RecordingTokenizer(shipped)
    sequences, truncated = encode_texts(recording, [text, "short text"], 64, True)
    assert (sequences, truncated) == reference(shipped, [text, "short text"], 64, True)
    assert max(recording.lengths) <= 2 * CHARS_PER_TOKEN * 64
    assert truncated == [True, False]


def test_text_without_part_end_read_whole(shipped: Tokenizer) -> None:
    text = "x" * 5000 + " tail"  # the only space comes after the first part's length
    unbroken = "y" * 3000
    assert encode_texts(shipped, [text, unbroken], 8, True) == reference(shipped, [text, unbroken], 8, True)


@pytest.mark.parametrize(
    "change",
    [
        lambda tokenizer: setattr(tokenizer, "normalizer", normalizers.Replace(" ", "_")),
        lambda tokenizer: setattr(tokenizer, "pre_tokenizer", pre_tokenizers.Metaspace()),
        lambda tokenizer: setattr(tokenizer, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)),
        lambda tokenizer: setattr(tokenizer, "pre_tokenizer", None),
        lambda tokenizer: tokenizer.add_tokens(["two words"]),
        # NFKC turns each diaeresis into a space and a combining mark, so the token has spaces once normalised
        lambda tokenizer: tokenizer.add_tokens([AddedToken("\u00a8".join("q" * 8), normalized=True)]),
        lambda tokenizer: setattr(tokenizer, "pre_tokenizer", pre_tokenizers.Digits()),
        lambda tokenizer: setattr(
            tokenizer,
            "pre_tokenizer",
            pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(use_regex=False), pre_tokenizers.Punctuation()]),
        ),
    ],
    ids=[
        "replace-normalizer", "metaspace", "byte-level-without-regex", "no-pre-tokenizer", "added-token-with-space",
        "added-token-with-space-once-normalized", "digits-only", "punctuation-after-byte-level-without-regex",
    ],
)
def test_other_tokenizers_are_encoded_whole(shipped: Tokenizer, change) -> None:
    tokenizer = Tokenizer.from_str(shipped.to_str())
    change(tokenizer)
    assert not reads_leading_parts(tokenizer)
    texts = ["two words " * 200, "short", " \u0308".join("q" * 8) + " tail" * 50]
    recording = RecordingTokenizer(tokenizer)
    assert encode_texts(recording, texts, 8, True) == reference(tokenizer, texts, 8, True)
    assert recording.lengths == [len(text) for text in texts]


def test_padded_batch_matches_encoded_ids(shipped: Tokenizer) -> None:
    texts = tricky_texts(50, seed=7, max_pieces=100)
    sequences, truncated = encode_texts(shipped, texts, 32, True)
    batch = tokenize_batch(shipped, texts, 32, True)
    assert batch.lengths == [len(ids) for ids in sequences]
    assert batch.truncated == truncated
    for row, ids in enumerate(sequences):
        assert batch.input_ids[row, : len(ids)].tolist() == ids
        assert batch.attention_mask[row].sum().item() == len(ids)


@pytest.mark.skipif(not DESCRIPTIONS.is_file(), reason=f"debian-descriptions data not found at {DESCRIPTIONS}")
def test_package_descriptions_match_whole_text_encoding(shipped: Tokenizer) -> None:
    with gzip.open(DESCRIPTIONS, "rt", encoding="utf-8") as handle:
        texts = [f"{record['short']}\n{record['long']}" for record in map(json.loads, handle)][:3000]
    for max_tokens in (16, 64, 256):
        for chars_per_token in (1, CHARS_PER_TOKEN):
            encoded = encode_texts(shipped, texts, max_tokens, True, chars_per_token=chars_per_token)
            assert encoded == reference(shipped, texts, max_tokens, True)


def test_digits_after_whitespace_split_reads_parts(shipped: Tokenizer) -> None:
    tokenizer = Tokenizer.from_str(shipped.to_str())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits()])
    assert reads_leading_parts(tokenizer)
    texts = tricky_texts(100, seed=11, max_pieces=60)
    assert encode_texts(tokenizer, texts, 8, True, chars_per_token=1) == reference(tokenizer, texts, 8, True)
