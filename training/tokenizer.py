"""Byte-level BPE tokenizer: training on a corpus and batch tokenisation for the encoders.

Byte-level BPE (the GPT-2 scheme, built with Hugging Face ``tokenizers``) is used instead
of WordPiece because every input byte has a token of its own. So emoji, CJK, control
characters and scripts absent from the training corpus encode without ``[UNK]`` and
without being dropped, and the service accepts any text a client sends.

The special tokens come first in the vocabulary, so their ids are fixed:
``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4. Every encoded text is
``[CLS] tokens [SEP]``.

:func:`tokenize_batch` is part of the model definition (the service imports it), so it
never mutates the tokenizer: truncation and padding are done here on the encoded ids,
and one tokenizer can be shared by threads.

Only the first ``max_tokens`` tokens of a text are kept, so :func:`encode_texts` reads a
long text in parts: it encodes a leading part that ends before a space, and reads more
only when that part has too few tokens. The ids are the same as those of the whole text,
because normalisation and the split into words never join characters across a space
that follows a non-space character. Tokenizers whose normalizer or pre-tokenizer could
do so are always given the whole text.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

logger = logging.getLogger(__name__)

PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))

_SURROGATES = re.compile("[\ud800-\udfff]")

# End of a leading part: a space, tab or newline right after a non-space character.
# Normalisation cannot join characters across it, and the pre-tokenizers below start a
# new word there.
_PART_END = re.compile(r"(?<=\S)[ \t\n]")
# Characters per wanted token in the first leading part. Debian package descriptions
# average 4.3 characters per token of the shipped text model (99th percentile 5.7), and a
# part with too few tokens is read again at twice the length.
CHARS_PER_TOKEN = 6
_PART_SAFE_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase"})
# Pre-tokenizers that only map characters or split. The whitespace splitters among them
# start a new word at every whitespace, and ByteLevel does so only with its regex.
_PART_SAFE_PRE_TOKENIZERS = frozenset({"ByteLevel", "Whitespace", "WhitespaceSplit", "BertPreTokenizer", "Digits", "Punctuation"})
_WHITESPACE_SPLITTERS = frozenset({"ByteLevel", "Whitespace", "WhitespaceSplit", "BertPreTokenizer"})

# 256 byte tokens plus the special tokens: a smaller vocabulary could not encode every byte.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


@dataclass
class TokenBatch:
    """Token ids of a batch of texts, padded with ``[PAD]`` to the longest text.

    ``input_ids`` (N, L) int64, ``attention_mask`` (N, L) bool (True on real tokens),
    ``lengths`` the real token count of each text including ``[CLS]`` and ``[SEP]``,
    ``truncated`` whether a text had more than ``max_tokens`` tokens and was cut.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    truncated: list[bool]


def train_tokenizer(texts: Iterable[str], vocab_size: int, lowercase: bool) -> Tokenizer:
    """Train a byte-level BPE tokenizer with at most ``vocab_size`` tokens on ``texts``.

    Texts are NFKC-normalised (and lowercased with ``lowercase``) before BPE. The
    vocabulary is smaller than ``vocab_size`` when the corpus has too few distinct
    pairs to merge; ``get_vocab_size()`` gives the real size.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((_valid_unicode(text) for text in texts), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        special_tokens=[(CLS_TOKEN, CLS_ID), (SEP_TOKEN, SEP_ID)],
    )
    _check_special_ids(tokenizer)
    logger.info("trained a byte-level BPE tokenizer of %d tokens", tokenizer.get_vocab_size())
    return tokenizer


def tokenize_batch(tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int, lowercase: bool) -> TokenBatch:
    """Encode ``texts`` as ``[CLS] ... [SEP]``, cut to ``max_tokens`` and pad to the longest.

    A text longer than ``max_tokens`` keeps its first ``max_tokens - 2`` tokens between
    ``[CLS]`` and ``[SEP]``. Lone surrogates, which are not valid Unicode, become U+FFFD.
    """
    sequences, truncated = encode_texts(tokenizer, texts, max_tokens, lowercase)
    input_ids, attention_mask = pad_sequences(sequences)
    return TokenBatch(input_ids, attention_mask, [len(ids) for ids in sequences], truncated)


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], max_tokens: int, lowercase: bool, *, chars_per_token: int = CHARS_PER_TOKEN
) -> tuple[list[list[int]], list[bool]]:
    """Return the token ids of each text, cut to ``max_tokens`` as :func:`tokenize_batch` does, and whether it was cut.

    A long text is encoded from a leading part of about ``chars_per_token * max_tokens``
    characters. A part that yields too few tokens is read again at twice the length.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be a sequence of str")
    if len(texts) == 0:
        raise ValueError("texts must hold at least one text")
    if chars_per_token < 1:
        raise ValueError(f"chars_per_token must be at least 1, got {chars_per_token}")
    prepared = [_valid_unicode(text.lower() if lowercase else text) for text in texts]
    part_length = chars_per_token * max_tokens if reads_leading_parts(tokenizer) else None

    encoded: list[list[int]] = [[] for _ in prepared]
    pending = list(range(len(prepared)))
    while pending:
        parts = [_leading_part(prepared[index], part_length) for index in pending]
        encodings = tokenizer.encode_batch_fast(parts, add_special_tokens=True)
        unfinished = []
        for index, part, encoding in zip(pending, parts, encodings):
            # a part's ids are the first ids of its whole text, so more than max_tokens of them settle the cut
            if len(encoding.ids) > max_tokens or len(part) == len(prepared[index]):
                encoded[index] = encoding.ids
            else:
                unfinished.append(index)
        pending = unfinished
        if part_length is not None:
            part_length *= 2

    # encode then cut: the last kept position becomes [SEP] again
    truncated = [len(ids) > max_tokens for ids in encoded]
    sequences = [ids[: max_tokens - 1] + [SEP_ID] if cut else ids for ids, cut in zip(encoded, truncated)]
    return sequences, truncated


def pad_sequences(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists with ``[PAD]`` to input_ids (N, L) int64 and attention_mask (N, L) bool, True on real tokens.

    Builds both in numpy from one flat array of all ids, which costs far less than a
    tensor per text.
    """
    if len(sequences) == 0:
        raise ValueError("sequences must hold at least one sequence of token ids")
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    attention_mask = np.arange(lengths.max()) < lengths[:, None]  # (N, L)
    input_ids = np.full(attention_mask.shape, PAD_ID, dtype=np.int64)
    input_ids[attention_mask] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def reads_leading_parts(tokenizer: Tokenizer) -> bool:
    """Return whether a leading part of a text, ended by ``_PART_END``, encodes to the first ids of the whole text.

    True for the byte-level BPE tokenizers trained here and for any tokenizer whose
    normalizers are Unicode normal forms or lowercasing and whose pre-tokenizer splits
    words at whitespace, with no added token that contains whitespace.
    """
    normalizer = json.loads(tokenizer.normalizer.__getstate__()) if tokenizer.normalizer is not None else None
    pre_tokenizer = json.loads(tokenizer.pre_tokenizer.__getstate__()) if tokenizer.pre_tokenizer is not None else None
    steps = [] if normalizer is None else normalizer.get("normalizers", [normalizer])
    if any(step.get("type") not in _PART_SAFE_NORMALIZERS for step in steps):
        return False
    if pre_tokenizer is None or not _splits_at_whitespace(pre_tokenizer):
        return False
    for added in tokenizer.get_added_tokens_decoder().values():
        # a normalized added token is matched after normalisation, which can add spaces
        forms = [added.content]
        if added.normalized and tokenizer.normalizer is not None:
            forms.append(tokenizer.normalizer.normalize_str(added.content))
        if any(char.isspace() for form in forms for char in form):
            return False
    return True


def _splits_at_whitespace(pre_tokenizer: dict[str, object]) -> bool:
    """Return whether this pre-tokenizer (or sequence of them) starts a new word at every whitespace and joins nothing."""
    steps = pre_tokenizer.get("pretokenizers") if pre_tokenizer.get("type") == "Sequence" else [pre_tokenizer]
    if not isinstance(steps, list) or not steps or any(step.get("type") not in _PART_SAFE_PRE_TOKENIZERS for step in steps):
        return False
    return any(
        step.get("type") in _WHITESPACE_SPLITTERS and (step.get("type") != "ByteLevel" or step.get("use_regex", True))
        for step in steps
    )


def _leading_part(text: str, length: int | None) -> str:
    """Return ``text`` up to the first part end at or after ``length`` characters, or all of it."""
    if length is None or len(text) <= length:
        return text
    end = _PART_END.search(text, length)
    return text[: end.start()] if end else text


def _valid_unicode(text: str) -> str:
    """Return ``text`` with lone surrogates replaced by U+FFFD, because Rust strings reject them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


def _check_special_ids(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless the special tokens have the fixed ids of this module."""
    for expected, token in enumerate(SPECIAL_TOKENS):
        found = tokenizer.token_to_id(token)
        if found != expected:
            raise ValueError(f"tokenizer maps {token} to id {found}, expected {expected}")


def check_tokenizer(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless ``tokenizer`` has the special tokens and template of this module."""
    _check_special_ids(tokenizer)
    ids = tokenizer.encode("", add_special_tokens=True).ids
    if ids != [CLS_ID, SEP_ID]:
        raise ValueError(f"tokenizer encodes the empty text as {ids}, expected [{CLS_ID}, {SEP_ID}] ([CLS] [SEP])")
