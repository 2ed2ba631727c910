import json

import numpy as np
import pytest
import torch

from training.artifact import export_artifact
from training.cli import eval_main, parse_train_args, train_main
from training.data import load_image_dataset
from training.encoders.resnet import ResNet

RESNET = {"name": "resnet", "kwargs": {"in_channels": 1, "depth": 10, "width": 4, "small_stem": True}}


def image_meta(name: str, space: str) -> dict:
    return {
        "name": name,
        "modality": "image",
        "architecture": RESNET,
        "embedding_dim": 32,
        "preprocessing": {"size": 8, "channels": 1, "mean": [0.3], "std": [0.4]},
        "normalize": True,
        "method": "simclr",
        "space": space,
    }


@pytest.fixture(scope="module")
def image_artifact(tmp_path_factory):
    torch.manual_seed(0)
    encoder = ResNet(**RESNET["kwargs"])
    encoder.train()
    encoder(torch.randn(64, 1, 8, 8))  # move BatchNorm statistics off their defaults
    return export_artifact(tmp_path_factory.mktemp("models") / "tiny", encoder.eval(), image_meta("tiny", "tiny"))


@pytest.fixture(scope="module")
def digit_arrays():
    digits = load_image_dataset("digits")
    return digits.images[:300, 0].numpy(), digits.labels[:300].numpy()


def run_eval(capsys, *argv: str) -> dict:
    assert eval_main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_prints_every_metric(capsys, image_artifact):
    metrics = run_eval(capsys, str(image_artifact), "--data", "digits", "--limit", "300", "--k", "10", "--shots", "3", "--draws", "2")
    assert 0.0 <= metrics["knn_top1_k10"] <= 1.0
    assert 0.0 <= metrics["linear_probe"] <= 1.0
    assert 0.0 <= metrics["linear_probe_3_per_class"] <= 1.0
    assert 0.0 <= metrics["one_class_auroc_mean"] <= 1.0
    assert sorted(metrics["one_class_auroc"]) == [str(label) for label in range(10)]
    assert metrics["reference_samples"] + metrics["evaluation_samples"] == 300
    assert "skipped" not in metrics


def test_eval_unlabelled_data_skips_supervised_metrics(capsys, tmp_path, image_artifact, digit_arrays):
    images, _ = digit_arrays
    np.savez(tmp_path / "unlabelled.npz", images=images)
    metrics = run_eval(capsys, str(image_artifact), "--data", str(tmp_path / "unlabelled.npz"))
    assert "knn_top1_k20" not in metrics
    assert "knn_top1_k20" in metrics["skipped"]
    assert metrics["labelled_evaluation_samples"] == 0


def test_eval_partly_labelled_data_uses_labelled_samples(capsys, tmp_path, image_artifact, digit_arrays):
    images, labels = digit_arrays
    labels = labels.copy()
    labels[::2] = -1
    np.savez(tmp_path / "half.npz", images=images, labels=labels)
    metrics = run_eval(capsys, str(image_artifact), "--data", str(tmp_path / "half.npz"), "--draws", "1")
    assert metrics["labelled_reference_samples"] + metrics["labelled_evaluation_samples"] == 150
    assert metrics["evaluation_samples"] == metrics["labelled_evaluation_samples"]
    assert 0.0 <= metrics["knn_top1_k20"] <= 1.0


def test_eval_single_labelled_class_skips_probes(capsys, tmp_path, image_artifact, digit_arrays):
    images, _ = digit_arrays
    labels = np.full(len(images), -1)
    labels[:40] = 0
    np.savez(tmp_path / "one_class.npz", images=images, labels=labels)
    metrics = run_eval(capsys, str(image_artifact), "--data", str(tmp_path / "one_class.npz"))
    assert metrics["knn_top1_k20"] == 1.0
    assert "linear_probe" in metrics["skipped"]
    assert "one_class_auroc_mean" in metrics["skipped"]


@pytest.mark.parametrize("mode, limit, epochs", [("linear", 400, 8), ("full", 240, 5)])
def test_eval_fine_tune_beats_chance_on_digits(capsys, image_artifact, mode, limit, epochs):
    metrics = run_eval(
        capsys, str(image_artifact), "--data", "digits", "--limit", str(limit), "--draws", "1",
        "--fine-tune", mode, "--fine-tune-epochs", str(epochs), "--fine-tune-lr", "0.01", "--batch-size", "32",
    )
    assert metrics["fine_tune"] == mode
    assert metrics["fine_tune_train_samples"] == limit // 2
    assert metrics["fine_tune_top1"] > 0.3  # ten classes: chance is 0.1


def test_eval_zero_shot_uses_text_model_of_same_space(capsys, tmp_path):
    from training.encoders.text import TextTransformer
    from training.tokenizer import train_tokenizer

    torch.manual_seed(0)
    export_artifact(tmp_path / "pair-image", ResNet(**RESNET["kwargs"]).eval(), image_meta("pair-image", "pair"))
    tokenizer = train_tokenizer([f"the letter {letter}" for letter in "ABCDEFGHIJ"] * 5, 300, True)
    text_kwargs = {"vocab_size": tokenizer.get_vocab_size(), "max_tokens": 16, "width": 16, "depth": 1, "heads": 2, "embedding_dim": 32}
    text_meta = {
        "name": "pair-text",
        "modality": "text",
        "architecture": {"name": "text_transformer", "kwargs": text_kwargs},
        "embedding_dim": 32,
        "preprocessing": {"tokenizer": "tokenizer.json", "max_tokens": 16, "lowercase": True},
        "normalize": True,
        "method": "clip",
        "space": "pair",
    }
    export_artifact(tmp_path / "pair-text", TextTransformer(**text_kwargs).eval(), text_meta, tokenizer.to_str())
    metrics = run_eval(capsys, str(tmp_path / "pair-image"), "--data", "digits", "--limit", "100", "--draws", "1")
    assert metrics["zero_shot_text_model"] == "pair-text"
    assert 0.0 <= metrics["zero_shot_top1"] <= 1.0


def test_eval_without_text_partner_has_no_zero_shot(capsys, image_artifact):
    metrics = run_eval(capsys, str(image_artifact), "--data", "digits", "--limit", "100", "--draws", "1")
    assert "zero_shot_top1" not in metrics


def test_eval_missing_artifact_exits_2(caplog, tmp_path):
    assert eval_main([str(tmp_path / "absent"), "--data", "digits"]) == 2
    assert "model.json is missing" in caplog.text


def test_eval_rejects_zero_neighbours(caplog, image_artifact):
    assert eval_main([str(image_artifact), "--data", "digits", "--k", "0"]) == 2
    assert "--k must be at least 1" in caplog.text


def test_train_flags_include_sync_batch_norm():
    config, _ = parse_train_args(["--method", "simclr", "--data", "digits", "--out", "m", "--sync-batch-norm"])
    assert config.sync_batch_norm is True


def test_train_reads_toml_config(tmp_path):
    config_file = tmp_path / "run.toml"
    config_file.write_text('method = "byol"\ndata = "digits"\nout = "m"\noptimizer = "lars"\nprecision = "fp32"\n')
    config, _ = parse_train_args(["--config", str(config_file)])
    assert config.method == "byol"
    assert config.optimizer == "lars"
    assert config.precision == "fp32"


def test_train_rejects_unknown_optimizer(capsys):
    # the config is validated before logging is set up, so the message goes to stderr
    assert train_main(["--method", "simclr", "--data", "digits", "--out", "m", "--optimizer", "adam"]) == 2
    assert "unknown optimizer 'adam'" in capsys.readouterr().err
