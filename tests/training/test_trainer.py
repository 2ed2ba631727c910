import json
import logging
import math
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_checkpoint
from training.cli import parse_train_args, train_main
from training.config import TrainConfig, read_config_file
from training.data import load_image_dataset
from training.methods import method_class
from training.trainer import (
    NonFiniteLossError,
    Trainer,
    TrainingInterrupted,
    _loss_values,
    _steps_per_epoch,
    batch_indices,
    collapse_warning,
    resolve_precision,
    train,
)


def small_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        method="simclr", data="digits", out=str(tmp_path / "model"), epochs=1, batch_size=32,
        encoder_depth=10, encoder_width=4, limit=160, checkpoint_every=1000, log_every=1000,
        extra={"run_dir": str(tmp_path / "run")},
    )
    values.update(overrides)
    return TrainConfig(**values)


def build_trainer(config: TrainConfig, run_dir) -> Trainer:
    torch.manual_seed(config.seed)
    data = load_image_dataset("digits").subset(torch.arange(160))
    method = method_class(config.method).from_data(config, data)
    return Trainer(config, method, data, None, torch.device("cpu"), run_dir)


def test_resume_gives_same_weights_as_uninterrupted_run(tmp_path):
    steps = 5  # one epoch of 160 samples at batch 32
    full = build_trainer(small_config(tmp_path, epochs=2), tmp_path / "full")
    full.fit()

    first = build_trainer(small_config(tmp_path, epochs=2), tmp_path / "split")
    first.total_steps = steps  # stop after the first epoch, as a killed run would
    first.fit()
    first.save_checkpoint()
    resumed = build_trainer(small_config(tmp_path, epochs=2, resume="auto"), tmp_path / "split")
    resumed.fit()

    assert resumed.state.step == full.state.step == 2 * steps
    for (name, expected), actual in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(expected, actual), name


def test_resume_from_epoch_boundary_checkpoint_keeps_history(tmp_path):
    full = build_trainer(small_config(tmp_path, epochs=2, checkpoint_every=5, keep_checkpoints=0), tmp_path / "full")
    full.fit()
    checkpoint = str(tmp_path / "full" / "checkpoint-00000005.pt")
    resumed = build_trainer(small_config(tmp_path, epochs=2, resume=checkpoint), tmp_path / "resumed")
    resumed.fit()
    assert [record["epoch"] for record in resumed.state.history] == [1, 2]
    assert resumed.state.history[1]["loss"] == full.state.history[1]["loss"]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_same_seed_gives_same_weights(tmp_path):
    first = build_trainer(small_config(tmp_path), tmp_path / "a")
    first.fit()
    second = build_trainer(small_config(tmp_path), tmp_path / "b")
    second.fit()
    for expected, actual in zip(first.method.state_dict().values(), second.method.state_dict().values()):
        assert torch.equal(expected, actual)


def test_non_finite_loss_stops_run_and_names_step(tmp_path):
    trainer = build_trainer(small_config(tmp_path, lr=1e30, grad_clip=0.0), tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step"):
        trainer.fit()


def test_checkpoints_keep_last_k(tmp_path):
    trainer = build_trainer(small_config(tmp_path, epochs=2, checkpoint_every=2, keep_checkpoints=2), tmp_path / "run")
    trainer.fit()
    names = sorted(path.name for path in (tmp_path / "run").glob("checkpoint-*.pt"))
    assert names == ["checkpoint-00000008.pt", "checkpoint-00000010.pt"]
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize("samples, batch, steps", [(64, 32, 2), (65, 32, 2), (66, 32, 3), (1, 32, 0), (2, 32, 1)])
def test_steps_per_epoch_drops_single_sample_batch(samples, batch, steps):
    assert _steps_per_epoch(samples, batch) == steps


def test_train_exports_artifact_with_metrics_and_command(tmp_path):
    config = small_config(tmp_path, epochs=2)
    paths = train(config, ["--method", "simclr", "--data", "digits"])
    meta = json.loads((paths[0] / "model.json").read_text())
    assert meta["training"]["command"] == "ssl-train --method simclr --data digits"
    assert 0.0 <= meta["metrics"]["knn_top1"] <= 1.0
    assert meta["training"]["steps"] == meta["training"]["epochs"] * 4
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_cli_flags_override_config_file(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("method: simclr\ndata: digits\nout: models/x\nepochs: 7\nbatch-size: 64\n")
    config, _ = parse_train_args(["--config", str(config_file), "--epochs", "3"])
    assert config.epochs == 3
    assert config.batch_size == 64


def test_cli_rejects_unknown_config_key(tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text('method = "simclr"\ndata = "digits"\nout = "m"\nepochz = 3\n')
    assert train_main(["--config", str(config_file)]) == 2
    assert "epochz" in capsys.readouterr().err


def test_cli_rejects_unknown_method(capsys):
    assert train_main(["--method", "nope", "--data", "digits", "--out", "m"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


class SignalOnProgressLine(logging.Handler):
    """Send this process ``signal_number`` when the progress line of ``step`` is logged."""

    def __init__(self, step: int, signal_number: int) -> None:
        super().__init__()
        self.marker = f"step {step}/"
        self.signal_number = signal_number

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.marker):
            os.kill(os.getpid(), self.signal_number)


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_checkpoint_and_exits_non_zero(tmp_path, caplog, signal_number, exit_code):
    handler = SignalOnProgressLine(2, signal_number)
    logging.getLogger("training.trainer").addHandler(handler)
    argv = [
        "--method", "simclr", "--data", "digits", "--limit", "96", "--batch-size", "32", "--epochs", "20",
        "--encoder-depth", "10", "--encoder-width", "4", "--log-every", "1", "--out", str(tmp_path / "model"),
        "--run-dir", str(tmp_path / "run"),
    ]
    try:
        with caplog.at_level(logging.INFO, logger="training"):
            assert train_main(argv) == exit_code
    finally:
        logging.getLogger("training.trainer").removeHandler(handler)
    assert [path.name for path in (tmp_path / "run").glob("checkpoint-*.pt")] == ["checkpoint-00000002.pt"]
    assert f"stopped by {signal.Signals(signal_number).name} after step 2" in caplog.text
    assert not (tmp_path / "model").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_request_stop_ends_run_after_current_step(tmp_path):
    trainer = build_trainer(small_config(tmp_path, epochs=2), tmp_path / "run")
    trainer.request_stop()
    with pytest.raises(TrainingInterrupted) as raised:
        trainer.fit()
    assert raised.value.step == 1
    assert raised.value.exit_code == 143
    assert load_checkpoint(raised.value.checkpoint)["step"] == 1


def test_checkpoint_holds_resumable_state(tmp_path):
    trainer = build_trainer(small_config(tmp_path, optimizer="lars"), tmp_path / "run")
    trainer.fit()
    state = load_checkpoint(sorted((tmp_path / "run").glob("checkpoint-*.pt"))[-1])
    assert state["step"] == 5
    assert state["scheduler"]["step"] == 5
    assert set(state["rng"]) >= {"torch", "numpy", "python"}
    assert len(state["generators"]) == 1
    assert state["config"]["optimizer"] == "lars"
    assert state["optimizer"]["state"]


def test_non_finite_loss_names_loss_terms(tmp_path):
    trainer = build_trainer(small_config(tmp_path, lr=1e30, grad_clip=0.0), tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match=r"loss=nan"):
        trainer.fit()


def test_loss_values_one_float_per_term():
    terms = {"loss": torch.tensor(1.5, dtype=torch.bfloat16), "reconstruction": torch.tensor([0.25]), "bad": torch.tensor(float("nan"))}
    values = _loss_values(terms)
    assert list(values) == ["loss", "reconstruction", "bad"]
    assert values["loss"] == 1.5
    assert values["reconstruction"] == 0.25
    assert math.isnan(values["bad"])


def test_loss_values_rejects_non_scalar_term():
    with pytest.raises(RuntimeError):
        _loss_values({"loss": torch.ones(2)})


def test_run_dir_config_replays_as_config_file(tmp_path):
    train(small_config(tmp_path), [])
    values = read_config_file(tmp_path / "run" / "config.json")
    replayed = TrainConfig(**values)
    assert replayed.lr == 1e-3  # SimCLR's default, resolved
    assert replayed.optimizer == "adamw"
    assert replayed.limit == 160
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["training"]["config"] == values


def test_train_writes_metrics_plot_png(tmp_path):
    train(small_config(tmp_path, epochs=2), [])
    plot = tmp_path / "run" / "metrics.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_train_same_seed_exports_same_weights(tmp_path):
    first = train(small_config(tmp_path / "a", extra={"run_dir": str(tmp_path / "a" / "run")}), [])[0]
    second = train(small_config(tmp_path / "b", extra={"run_dir": str(tmp_path / "b" / "run")}), [])[0]
    expected, actual = load_file(first / "weights.safetensors"), load_file(second / "weights.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_precision_is_fp32_on_cpu(caplog):
    assert resolve_precision("auto", torch.device("cpu")) is None
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("bf16", torch.device("cpu")) is None
    assert "only used on CUDA" in caplog.text


def test_config_rejects_unknown_precision(tmp_path):
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        small_config(tmp_path, precision="fp8")


def spread_record(std: float) -> dict:
    return {"embedding_std": std, "collapse_reference": 0.25}


def test_collapse_warning_when_low_and_halved():
    assert "collapsing" in collapse_warning([spread_record(0.02), spread_record(0.01), spread_record(0.009)])


def test_collapse_warning_silent_when_low_but_rising():
    assert collapse_warning([spread_record(0.005), spread_record(0.01)]) is None


def test_collapse_warning_silent_on_small_dip():
    assert collapse_warning([spread_record(0.0043), spread_record(0.0040)]) is None


def test_collapse_warning_silent_when_falling_but_spread():
    assert collapse_warning([spread_record(0.2), spread_record(0.1)]) is None


def test_collapse_warning_silent_on_first_epoch():
    assert collapse_warning([spread_record(0.001)]) is None


def test_batch_indices_shard_epoch_disjointly():
    order = torch.randperm(70, generator=torch.Generator().manual_seed(0))
    steps = _steps_per_epoch(70, 32, world_size=2)
    shards = [torch.cat([batch_indices(order, step, 32, rank, 2) for step in range(steps)]) for rank in range(2)]
    assert steps == 3  # 32, 32, then 6 split 3 and 3
    assert len(set(shards[0].tolist()) & set(shards[1].tolist())) == 0
    assert len(shards[0]) == len(shards[1]) == 35


@pytest.mark.parametrize("samples, batch, world, steps", [(64, 32, 2, 2), (67, 32, 2, 2), (68, 32, 2, 3), (70, 32, 4, 2), (72, 32, 4, 3)])
def test_steps_per_epoch_needs_two_per_rank(samples, batch, world, steps):
    assert _steps_per_epoch(samples, batch, world) == steps


BYOL_SMALL = {"method": "byol", "augment": "glyphs", "projection_dim": 16, "projection_hidden_dim": 32, "warmup_epochs": 0.0}


def byol_checkpoint(tmp_path, predictor_lr_scale: float):
    """Train a small BYOL run for one step and return its trainer and checkpoint path."""
    first = build_trainer(small_config(tmp_path, predictor_lr_scale=predictor_lr_scale, **BYOL_SMALL), tmp_path / "run")
    first.total_steps = 1
    first.fit()
    return first, first.save_checkpoint()


def test_resume_other_group_layout_explains(tmp_path):
    first, checkpoint = byol_checkpoint(tmp_path, predictor_lr_scale=1.0)
    assert len(first.optimizer.param_groups) == 2  # one scale: the layout of checkpoints without scaled groups

    with pytest.raises(ValueError, match="--predictor-lr-scale 1"):
        build_trainer(small_config(tmp_path, resume=str(checkpoint), **BYOL_SMALL), tmp_path / "run").fit()
    resumed = build_trainer(small_config(tmp_path, resume=str(checkpoint), predictor_lr_scale=1.0, **BYOL_SMALL), tmp_path / "run")
    resumed.fit()
    assert resumed.state.step == resumed.total_steps


def test_resume_keeps_new_lr_scale(tmp_path):
    _, checkpoint = byol_checkpoint(tmp_path, predictor_lr_scale=10.0)
    resumed = build_trainer(small_config(tmp_path, resume=str(checkpoint), predictor_lr_scale=3.0, **BYOL_SMALL), tmp_path / "run")
    resumed._resume(str(checkpoint))
    assert sorted({group["lr_scale"] for group in resumed.optimizer.param_groups}) == [1.0, 3.0]
