"""Tests that InfoNCE and the CLIP loss on two ranks equal one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from tests.training.two_ranks import run_two_ranks
from training.losses import clip_loss, info_nce

BATCH_PER_RANK = 3
FEATURES = 5
TEMPERATURE = 0.2
LOGIT_SCALE = 7.0


def example_inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    total = 2 * BATCH_PER_RANK
    return {
        "first": torch.randn(total, FEATURES, generator=generator, dtype=torch.float64),
        "second": torch.randn(total, FEATURES, generator=generator, dtype=torch.float64),
        "weight": torch.randn(4, FEATURES, generator=generator, dtype=torch.float64),
    }


def projection(inputs: dict[str, torch.Tensor]) -> nn.Linear:
    layer = nn.Linear(FEATURES, 4, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(inputs["weight"])
    return layer


def losses_and_gradients(inputs: dict[str, torch.Tensor], rows: slice, wrap) -> dict[str, torch.Tensor]:
    """Return both losses on ``rows`` and the projection's gradient of each."""
    results = {}
    for name in ("info_nce", "clip"):
        layer = projection(inputs)
        model = wrap(layer)
        # both inputs through one forward pass: (2B, F) -> (2B, 4)
        first, second = model(torch.cat([inputs["first"][rows], inputs["second"][rows]])).chunk(2)
        loss = info_nce(first, second, TEMPERATURE) if name == "info_nce" else clip_loss(first, second, LOGIT_SCALE)
        loss.backward()
        results[f"{name}_loss"] = loss.detach()
        results[f"{name}_grad"] = layer.weight.grad.clone()
    return results


def worker(rank: int, out_dir: str) -> None:
    rows = slice(rank * BATCH_PER_RANK, (rank + 1) * BATCH_PER_RANK)
    results = losses_and_gradients(example_inputs(), rows, nn.parallel.DistributedDataParallel)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("contrastive")
    run_two_ranks(worker, str(out_dir))
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(2)]


@pytest.fixture(scope="module")
def one_process_results():
    return losses_and_gradients(example_inputs(), slice(None), lambda layer: layer)


@pytest.mark.parametrize("name", ["info_nce", "clip"])
def test_two_ranks_loss_equals_one(two_rank_results, one_process_results, name):
    mean_loss = (two_rank_results[0][f"{name}_loss"] + two_rank_results[1][f"{name}_loss"]) / 2
    assert torch.allclose(mean_loss, one_process_results[f"{name}_loss"], rtol=1e-10)


@pytest.mark.parametrize("name", ["info_nce", "clip"])
def test_two_ranks_gradients_equal_one(two_rank_results, one_process_results, name):
    for result in two_rank_results:
        assert torch.allclose(result[f"{name}_grad"], one_process_results[f"{name}_grad"], rtol=1e-10)
