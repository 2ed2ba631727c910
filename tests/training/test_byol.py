"""BYOL: the target network's isolation, its moving average and momentum schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.training import helpers
from tests.training.helpers import TINY_RESNET
from training.artifact import load_artifact
from training.config import TrainConfig
from training.methods.byol import BYOL
from training.optim import build_optimizer
from training.trainer import Trainer, train

CPU = torch.device("cpu")


def tiny_config(tmp_path: Path, **settings: object) -> TrainConfig:
    defaults = {**TINY_RESNET, "projection_dim": 16, "projection_hidden_dim": 32, "augment": "glyphs"}
    return helpers.tiny_config(tmp_path, "byol", **{**defaults, **settings})


def build(tmp_path: Path, digits, **settings: object) -> BYOL:
    torch.manual_seed(0)
    return BYOL.from_data(tiny_config(tmp_path, **settings), digits)


def step(method: BYOL, digits, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    return method.training_step(digits.batch(torch.arange(batch_size), CPU), torch.Generator().manual_seed(seed))


def test_target_receives_no_gradient(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    step(method, digits)["loss"].backward()
    assert all(parameter.grad is None for parameter in method.target_parameters())
    assert all(not parameter.requires_grad for parameter in method.target_parameters())
    assert all(parameter.grad is not None for parameter in method.encoder.parameters())
    assert all(parameter.grad is not None for parameter in method.prediction.parameters())


def test_optimizer_skips_target(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    optimised = {id(p) for group in build_optimizer(method, "adamw", 1e-3, 0.0).param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in method.target_parameters()}


def test_prediction_head_learns_faster(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, predictor_lr_scale=10.0, warmup_epochs=0.0, batch_size=16)
    trainer = Trainer(method.config, method, digits, None, CPU, tmp_path / "run")
    trainer.train_step(torch.arange(16))
    prediction = {id(p) for p in method.prediction.parameters()}
    rates = {}
    for group in trainer.optimizer.param_groups:
        in_head = {id(p) in prediction for p in group["params"]}
        assert len(in_head) == 1  # each group is all head parameters or none of them
        rates.setdefault(in_head.pop(), set()).add(group["lr"])
    assert len(rates[False]) == 1
    assert len(rates[True]) == 1
    head_rate, rest_rate = rates[True].pop(), rates[False].pop()
    assert rest_rate > 0
    assert head_rate == pytest.approx(10 * rest_rate)


def test_target_starts_as_online_copy(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    for online, target in zip(method.encoder.parameters(), method.target_encoder.parameters()):
        assert torch.equal(online, target)
        assert online.data_ptr() != target.data_ptr()


def test_ema_update(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, momentum_base=0.9)
    with torch.no_grad():
        for parameter in [*method.encoder.parameters(), *method.projection.parameters()]:
            parameter.add_(torch.randn_like(parameter))
    online = [p.clone() for p in [*method.encoder.parameters(), *method.projection.parameters()]]
    target = [p.clone() for p in method.target_parameters()]
    method.on_step_end(0, 10)  # momentum at step 0 is the base, 0.9
    for new, old, source in zip(method.target_parameters(), target, online):
        assert torch.allclose(new, 0.9 * old + 0.1 * source, atol=1e-6)


def test_momentum_schedule(tmp_path: Path, digits) -> None:
    config = tiny_config(tmp_path, epochs=4, batch_size=16, warmup_epochs=1.0)
    method = BYOL.from_data(config, digits)
    trainer = Trainer(config, method, digits, None, CPU, tmp_path / "run")
    total, warmup = trainer.total_steps, trainer.warmup_steps
    assert (total, warmup) == (16, 4)

    method.on_step_end(0, total)
    assert method.momentum == pytest.approx(0.996)
    method.on_step_end(warmup, total)
    assert method.momentum == pytest.approx(1 - 0.004 * (math.cos(math.pi * 4 / 16) + 1) / 2)
    assert method.momentum == pytest.approx(0.9965858, abs=1e-7)
    method.on_step_end(total - 1, total)
    assert method.momentum == pytest.approx(0.9999616, abs=1e-7)
    method.on_step_end(total, total)
    assert method.momentum == 1.0


def test_target_in_state_dict(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits)
    method.on_step_end(0, 10)
    with torch.no_grad():
        next(method.target_encoder.parameters()).add_(1.0)
    restored = build(tmp_path, digits)
    restored.load_state_dict(method.state_dict())
    for saved, loaded in zip(method.target_parameters(), restored.target_parameters()):
        assert torch.equal(saved, loaded)
    assert any(key.startswith("target_encoder.") for key in method.state_dict())


def test_views_use_byol_presets(tmp_path: Path, digits) -> None:
    method = build(tmp_path, digits, augment=None)
    assert method.augmentations[0].config.blur_prob == 1.0
    assert method.augmentations[1].config.solarize_prob == 0.2


def test_same_seed_same_loss(tmp_path: Path, digits) -> None:
    first = step(build(tmp_path, digits), digits, seed=3)["loss"]
    second = step(build(tmp_path, digits), digits, seed=3)["loss"]
    assert torch.equal(first, second)


def test_loss_symmetric_range(tmp_path: Path, digits) -> None:
    loss = step(build(tmp_path, digits), digits)["loss"].item()
    assert 0.0 <= loss <= 8.0


def test_batch_of_one(tmp_path: Path, digits) -> None:
    loss = step(build(tmp_path, digits), digits, batch_size=1)["loss"]
    loss.backward()
    assert math.isfinite(loss.item())


def test_rejects_invalid_momentum(tmp_path: Path, digits) -> None:
    with pytest.raises(ValueError, match="momentum_base"):
        build(tmp_path, digits, momentum_base=1.5)


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_rejects_non_positive_predictor_scale(tmp_path: Path, scale: float) -> None:
    with pytest.raises(ValueError, match="predictor_lr_scale"):
        tiny_config(tmp_path, predictor_lr_scale=scale)


def test_trains_with_partial_batch_and_exports(tmp_path: Path) -> None:
    # 30 samples, 24 after the hold-out: two batches of 11 and a last one of 2.
    config = tiny_config(tmp_path, epochs=1, batch_size=11, limit=30, checkpoint_every=1000)
    (path,) = train(config, argv=[])
    artifact = load_artifact(path)
    assert artifact.meta.training["steps"] == 3
    assert artifact.encoder(torch.rand(2, 1, 8, 8)).shape == (2, 64)
