import math

import pytest
import torch
from torch import nn

from training.optim import LARS, build_optimizer, parameter_groups


def reference_lars_step(
    weights: list[float], grads: list[float], buffer: list[float], lr: float, momentum: float,
    weight_decay: float, trust_coefficient: float, adapt: bool,
) -> tuple[list[float], list[float]]:
    """Take one step of Algorithm 1 of You et al. (2017) with plain Python floats."""
    weight_norm = math.sqrt(sum(w * w for w in weights))
    grad_norm = math.sqrt(sum(g * g for g in grads))
    local_lr = 1.0
    if adapt and weight_norm > 0 and grad_norm > 0:
        local_lr = trust_coefficient * weight_norm / (grad_norm + weight_decay * weight_norm)
    buffer = [momentum * v + lr * local_lr * (g + weight_decay * w) for v, g, w in zip(buffer, grads, weights)]
    weights = [w - v for w, v in zip(weights, buffer)]
    return weights, buffer


def test_lars_matches_loop_reference():
    generator = torch.Generator().manual_seed(0)
    weight = nn.Parameter(torch.randn(3, 4, generator=generator, dtype=torch.float64))
    bias = nn.Parameter(torch.randn(4, generator=generator, dtype=torch.float64))
    optimizer = LARS(
        [{"params": [weight], "weight_decay": 0.01, "lars": True}, {"params": [bias], "weight_decay": 0.0, "lars": False}],
        lr=0.5, momentum=0.9, trust_coefficient=0.02,
    )
    expected = {
        "weight": (weight.detach().flatten().tolist(), [0.0] * 12, 0.01, True),
        "bias": (bias.detach().tolist(), [0.0] * 4, 0.0, False),
    }
    for step, lr in enumerate([0.5, 0.3, 0.1, 0.05]):
        for group in optimizer.param_groups:
            group["lr"] = lr
        weight.grad = torch.randn(3, 4, generator=generator, dtype=torch.float64)
        bias.grad = torch.randn(4, generator=generator, dtype=torch.float64)
        grads = {"weight": weight.grad.flatten().tolist(), "bias": bias.grad.tolist()}
        optimizer.step()
        for name, (values, buffer, decay, adapt) in expected.items():
            values, buffer = reference_lars_step(values, grads[name], buffer, lr, 0.9, decay, 0.02, adapt)
            expected[name] = (values, buffer, decay, adapt)
    assert weight.detach().flatten().tolist() == pytest.approx(expected["weight"][0], rel=1e-12)
    assert bias.detach().tolist() == pytest.approx(expected["bias"][0], rel=1e-12)


def test_lars_moves_zero_weights_at_plain_rate():
    weight = nn.Parameter(torch.zeros(2, 2))
    optimizer = LARS([weight], lr=0.1, momentum=0.0)
    weight.grad = torch.ones(2, 2)
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.full((2, 2), -0.1))


@pytest.mark.parametrize("keyword, value", [("lr", 0.0), ("momentum", 1.0), ("weight_decay", -1.0), ("trust_coefficient", 0.0)])
def test_lars_rejects_invalid_settings(keyword, value):
    settings = {"lr": 0.1, keyword: value}
    with pytest.raises(ValueError, match=keyword):
        LARS([nn.Parameter(torch.ones(2))], **settings)


def small_network() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3), nn.LayerNorm(3))


def test_parameter_groups_exclude_norms_and_biases_from_decay():
    network = small_network()
    decay, no_decay = parameter_groups(network, 0.1)
    decayed = {id(parameter) for parameter in decay["params"]}
    undecayed = {id(parameter) for parameter in no_decay["params"]}
    assert decayed == {id(network[0].weight), id(network[3].weight)}
    assert undecayed == {id(network[0].bias), id(network[1].weight), id(network[1].bias), id(network[3].bias),
                         id(network[4].weight), id(network[4].bias)}
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    assert no_decay["lars"] is False


def test_parameter_groups_leave_out_frozen_parameters():
    network = small_network()
    network[3].weight.requires_grad_(False)
    decay, _ = parameter_groups(network, 0.1)
    assert [id(parameter) for parameter in decay["params"]] == [id(network[0].weight)]


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_optimizers_decay_weights_but_not_biases(name):
    network = small_network()
    optimizer = build_optimizer(network, name, lr=0.1, weight_decay=0.5)
    before = {key: value.clone() for key, value in network.state_dict().items()}
    for parameter in network.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    after = network.state_dict()
    assert not torch.equal(after["0.weight"], before["0.weight"])
    assert torch.equal(after["0.bias"], before["0.bias"])
    assert torch.equal(after["1.weight"], before["1.weight"])
    assert torch.equal(after["4.bias"], before["4.bias"])


def test_adamw_decay_is_decoupled():
    # With zero gradients AdamW only decays: w <- w * (1 - lr * weight_decay).
    network = small_network()
    optimizer = build_optimizer(network, "adamw", lr=0.1, weight_decay=0.5)
    weight = network[3].weight.detach().clone()
    for parameter in network.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    assert torch.allclose(network[3].weight.detach(), weight * 0.95)


def test_build_optimizer_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown optimizer 'adam'"):
        build_optimizer(small_network(), "adam", lr=0.1, weight_decay=0.0)


def test_build_optimizer_rejects_non_positive_lr():
    with pytest.raises(ValueError, match="lr must be positive"):
        build_optimizer(small_network(), "sgd", lr=0.0, weight_decay=0.0)


def test_scaled_submodules_get_own_groups():
    network = small_network()
    groups = parameter_groups(network, 0.1, lr_scales={network[3]: 10.0})
    by_key = {(group["lr_scale"], group["weight_decay"]): {id(p) for p in group["params"]} for group in groups}
    assert by_key == {
        (1.0, 0.1): {id(network[0].weight)},
        (1.0, 0.0): {id(network[0].bias), id(network[1].weight), id(network[1].bias), id(network[4].weight), id(network[4].bias)},
        (10.0, 0.1): {id(network[3].weight)},
        (10.0, 0.0): {id(network[3].bias)},
    }


def test_non_positive_scale_rejected():
    network = small_network()
    with pytest.raises(ValueError, match="scales must be positive"):
        parameter_groups(network, 0.1, lr_scales={network[3]: 0.0})


@pytest.mark.parametrize("name", ["adamw", "sgd", "lars"])
def test_scaled_group_steps_further(name):
    # Two identical layers get the same gradient, and one learns 10 times faster.
    network = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        network[1].weight.copy_(network[0].weight)
    optimizer = build_optimizer(network, name, lr=0.01, weight_decay=0.0, lr_scales={network[1]: 10.0})
    assert sorted({group["lr"] for group in optimizer.param_groups}) == pytest.approx([0.01, 0.1])
    before = network[0].weight.detach().clone()
    for parameter in network.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    optimizer.step()
    torch.testing.assert_close(network[1].weight.detach() - before, 10 * (network[0].weight.detach() - before))
