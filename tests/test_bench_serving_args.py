"""bench_serving's --variant parsing: service settings and environment variables."""

from __future__ import annotations

import argparse

import pytest

from bench.bench_serving import parse_variant


def test_variant_setting_becomes_embed_variable() -> None:
    assert parse_variant("batch-128:max_batch_size=128") == ("batch-128", {"EMBED_MAX_BATCH_SIZE": "128"})


def test_variant_passes_environment_variable() -> None:
    label, environment = parse_variant("spin:OMP_WAIT_POLICY=ACTIVE,large_batch_items=0")
    assert label == "spin"
    assert environment == {"OMP_WAIT_POLICY": "ACTIVE", "EMBED_LARGE_BATCH_ITEMS": "0"}


@pytest.mark.parametrize("text", ["nolabel", ":max_batch_size=1", "x:unknown=1", "x:EMBED_PORT=1", "x:max_batch_size"])
def test_variant_rejects_malformed(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variant(text)
