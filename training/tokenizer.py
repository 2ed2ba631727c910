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
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 ([CLS] and [SEP]), got {max_tokens}")
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be a sequence of str")
    if len(texts) == 0:
        raise ValueError("texts must hold at least one text")
    prepared = [_valid_unicode(text.lower() if lowercase else text) for text in texts]
    encodings = tokenizer.encode_batch(prepared, add_special_tokens=True)

    sequences, truncated = [], []
    for encoding in encodings:
        ids = encoding.ids
        # encode then cut: the last kept position becomes [SEP] again
        truncated.append(len(ids) > max_tokens)
        sequences.append(ids[: max_tokens - 1] + [SEP_ID] if len(ids) > max_tokens else ids)

    lengths = [len(ids) for ids in sequences]
    input_ids = torch.full((len(sequences), max(lengths)), PAD_ID, dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    attention_mask = torch.arange(input_ids.shape[1]).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (N, L)
    return TokenBatch(input_ids, attention_mask, lengths, truncated)


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
