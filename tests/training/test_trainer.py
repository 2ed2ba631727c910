import json

import pytest
import torch

from training.cli import parse_train_args, train_main
from training.config import TrainConfig
from training.data import load_image_dataset
from training.methods import method_class
from training.trainer import NonFiniteLossError, Trainer, _steps_per_epoch, train


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
