import math

import pytest
import torch

from training.losses import NTXentLoss, nt_xent


def reference_nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float) -> float:
    """Compute NT-Xent with explicit loops over anchors and candidates."""
    embeddings = torch.cat([view_a, view_b]).double()
    embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)
    count = embeddings.shape[0]
    batch = count // 2
    total = 0.0
    for anchor in range(count):
        positive = (anchor + batch) % count
        denominator = 0.0
        for candidate in range(count):
            if candidate == anchor:
                continue
            denominator += math.exp(float(embeddings[anchor] @ embeddings[candidate]) / temperature)
        numerator = math.exp(float(embeddings[anchor] @ embeddings[positive]) / temperature)
        total += -math.log(numerator / denominator)
    return total / count


@pytest.mark.parametrize("batch, dim, temperature", [(2, 3, 0.5), (7, 16, 0.1), (16, 8, 1.0)])
def test_nt_xent_matches_loop_reference(batch, dim, temperature):
    generator = torch.Generator().manual_seed(batch)
    view_a = torch.randn(batch, dim, generator=generator)
    view_b = torch.randn(batch, dim, generator=generator)
    loss = nt_xent(view_a, view_b, temperature)
    assert loss.item() == pytest.approx(reference_nt_xent(view_a, view_b, temperature), rel=1e-5)


@pytest.mark.parametrize("batch, temperature", [(2, 0.5), (4, 0.1), (8, 0.07)])
def test_nt_xent_exact_value_correlated_orthogonal_batch(batch, temperature):
    # Identical views of mutually orthogonal samples: the positive has similarity 1 and
    # each of the 2N - 2 negatives has similarity 0.
    views = torch.eye(batch, 2 * batch, dtype=torch.float64)
    expected = math.log(1 + (2 * batch - 2) * math.exp(-1 / temperature))
    assert nt_xent(views, views.clone(), temperature).item() == pytest.approx(expected, rel=1e-5)


def test_nt_xent_identical_embeddings_give_log_2n_minus_1():
    views = torch.ones(5, 4)
    assert nt_xent(views, views, 0.3).item() == pytest.approx(math.log(9), rel=1e-6)


def test_nt_xent_self_similarity_is_masked_not_offset():
    # Scaling the self-similarity term cannot matter: changing the temperature only on
    # the diagonal would change an offset implementation but not a masked one.
    generator = torch.Generator().manual_seed(0)
    view_a, view_b = torch.randn(2, 6, 5, generator=generator)
    low = nt_xent(view_a, view_b, 0.05)
    assert torch.isfinite(low)
    assert low.item() == pytest.approx(reference_nt_xent(view_a, view_b, 0.05), rel=1e-5)


def test_nt_xent_gradient_reaches_both_views():
    view_a = torch.randn(4, 8, requires_grad=True)
    view_b = torch.randn(4, 8, requires_grad=True)
    nt_xent(view_a, view_b, 0.5).backward()
    assert view_a.grad.abs().sum() > 0
    assert view_b.grad.abs().sum() > 0


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match="views must both be"):
        nt_xent(torch.randn(4, 8), torch.randn(3, 8), 0.5)


def test_nt_xent_module_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature must be positive"):
        NTXentLoss(temperature=0.0)
