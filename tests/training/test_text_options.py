"""Tests of the text options: --text-dropout and the CLIP text tower sizes, from flags and files to models."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from training.captions import caption_images
from training.cli import _train_parser, parse_train_args, train_main
from training.config import TrainConfig, read_config_file
from training.data import ImageDataset, TextDataset
from training.data_pairs import PairDataset
from training.methods.clip import CLIP, TEXT_TOWER_DEFAULTS
from training.methods.mlm import MaskedLanguageModel
from training.methods.simcse import SimCSE
from training.methods.text import TextMethod

from .helpers import TINY_RESNET, tiny_config

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ["--method", "simcse", "--data", "texts.txt", "--out", "models/notes"]
CLIP_REQUIRED = ["--method", "clip", "--data", "digits", "--out", "models/pair"]
TOWER = {"text_encoder_width": 24, "text_encoder_depth": 3, "text_heads": 6}
TEXTS = [
    "a library for parsing json documents",
    "command line tool to convert images",
    "fonts for latin greek and cyrillic scripts",
    "documentation of the library in html",
] * 4
TINY_IMAGE = {**TINY_RESNET, "embedding_dim": 8}
# sizes that keep the text methods' encoders tiny
SMALL_TEXT = {"vocab_size": 300, "max_tokens": 16, "encoder_width": 16, "encoder_depth": 1, "heads": 2}


def text_dataset() -> TextDataset:
    return TextDataset(list(TEXTS), torch.full((len(TEXTS),), -1), "texts", "")


def digit_pairs(digits: ImageDataset) -> PairDataset:
    return PairDataset(digits, caption_images(digits.labels.numpy(), "the digit {label}"))


def write_config(folder: Path, values: dict, suffix: str = ".yaml") -> str:
    path = folder / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(values), encoding="utf-8")
    elif suffix == ".toml":
        lines = [f"{key} = {json.dumps(value)}" for key, value in values.items() if not isinstance(value, dict)]
        for key, table in ((key, value) for key, value in values.items() if isinstance(value, dict)):
            lines += [f"[{key}]", *(f"{name} = {json.dumps(value)}" for name, value in table.items())]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def dropouts(encoder: torch.nn.Module) -> set[float]:
    """Return every dropout probability in a text transformer: embeddings, attention and residual branches."""
    values = {encoder.embedding_dropout.p}
    for block in encoder.blocks:
        values |= {block.dropout.p, block.attention.dropout}
    return values


def recorded_argv(model: str) -> list[str]:
    """Return the ssl-train arguments recorded in a shipped model, with its config file found from any folder."""
    command = json.loads((ROOT / "models" / model / "model.json").read_text())["training"]["command"]
    argv = shlex.split(command)[1:]
    if "--config" in argv:
        position = argv.index("--config") + 1
        argv[position] = str(ROOT / argv[position])
    return argv


def without_vocab_size(architecture: dict) -> dict:
    """Return a text_transformer entry without vocab_size, which depends on the data the tokenizer saw."""
    return {**architecture, "kwargs": {key: value for key, value in architecture["kwargs"].items() if key != "vocab_size"}}


def test_flags_set_text_dropout():
    config, _ = parse_train_args([*REQUIRED, "--text-dropout", "0.25"])
    assert config.text_dropout == 0.25


def test_flags_set_text_tower():
    config, _ = parse_train_args([*CLIP_REQUIRED, "--text-encoder-width", "24", "--text-encoder-depth", "3", "--text-heads", "6"])
    assert config.text_encoder_width == 24
    assert config.text_encoder_depth == 3
    assert config.text_heads == 6


def test_unset_options_stay_none():
    config, _ = parse_train_args(CLIP_REQUIRED)
    for name in ("text_dropout", *TOWER):
        assert getattr(config, name) is None, name


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_config_file_sets_options(tmp_path, suffix):
    path = write_config(tmp_path, {"text_dropout": 0.2, **TOWER}, suffix)
    config, _ = parse_train_args(["--config", path, *CLIP_REQUIRED])
    assert config.text_dropout == 0.2
    for name, value in TOWER.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_legacy_extra_sets_options(tmp_path, suffix):
    path = write_config(tmp_path, {"extra": {"text_dropout": 0.2, **TOWER}}, suffix)
    config, _ = parse_train_args(["--config", path, *CLIP_REQUIRED])
    assert config.text_dropout == 0.2
    for name, value in TOWER.items():
        assert getattr(config, name) == value, name
    assert config.extra == {}


def test_legacy_extra_keeps_other_keys(tmp_path):
    path = write_config(tmp_path, {"extra": {"text_dropout": 0.3}})
    config, _ = parse_train_args(["--config", path, *REQUIRED, "--run-dir", str(tmp_path / "run")])
    assert config.text_dropout == 0.3
    assert config.extra == {"run_dir": str(tmp_path / "run")}


def test_legacy_extra_equals_top_level():
    legacy = TrainConfig(method="clip", data="digits", out="out", extra={"text_dropout": 0.2, **TOWER})
    current = TrainConfig(method="clip", data="digits", out="out", text_dropout=0.2, **TOWER)
    assert legacy == current
    assert legacy.to_dict() == current.to_dict()


def test_shipped_simcse_config_sets_dropout():
    assert read_config_file(ROOT / "configs" / "simcse-debian.yaml") == {"text_dropout": 0.3}


def test_flag_overrides_file(tmp_path):
    path = write_config(tmp_path, {"text_dropout": 0.2, **TOWER})
    argv = ["--config", path, *CLIP_REQUIRED, "--text-dropout", "0.05", "--text-encoder-width", "48", "--text-heads", "4"]
    config, _ = parse_train_args(argv)
    assert config.text_dropout == 0.05
    assert config.text_encoder_width == 48
    assert config.text_heads == 4
    assert config.text_encoder_depth == 3  # from the file


def test_flag_overrides_legacy_extra(tmp_path):
    path = write_config(tmp_path, {"extra": {"text_dropout": 0.2, "text_encoder_width": 24, "text_heads": 6}})
    config, _ = parse_train_args(["--config", path, *CLIP_REQUIRED, "--text-dropout", "0.05", "--text-heads", "4"])
    assert config.text_dropout == 0.05
    assert config.text_heads == 4
    assert config.text_encoder_width == 24  # from the file


def test_file_setting_option_twice_raises(tmp_path):
    path = write_config(tmp_path, {"text_dropout": 0.2, "extra": {"text_dropout": 0.3}})
    with pytest.raises(ValueError, match=r"sets text_dropout twice, 0\.2 at the top level and 0\.3 under extra"):
        read_config_file(path)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, "high", True])
def test_invalid_text_dropout_raises(value):
    with pytest.raises(ValueError, match=rf"text_dropout must be a number in \[0, 1\), got {value!r}"):
        TrainConfig(method="simcse", data="texts.txt", out="out", text_dropout=value)


@pytest.mark.parametrize("name", list(TOWER))
@pytest.mark.parametrize("value", [0, -4, 2.5, "wide", True])
def test_invalid_tower_size_raises(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a positive integer, got {value!r}"):
        TrainConfig(method="clip", data="digits", out="out", **{name: value})


def test_width_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match="text_encoder_width 100 must be divisible by text_heads 3"):
        TrainConfig(method="clip", data="digits", out="out", text_encoder_width=100, text_heads=3)


def test_legacy_extra_invalid_value_raises():
    with pytest.raises(ValueError, match=r"text_dropout must be a number in \[0, 1\), got 1\.2"):
        TrainConfig(method="simcse", data="texts.txt", out="out", extra={"text_dropout": 1.2})


def test_text_dropout_on_image_method_raises():
    with pytest.raises(ValueError, match=r"text_dropout applies only to methods with a text encoder \(mlm, simcse, clip\), not to simclr"):
        TrainConfig(method="simclr", data="digits", out="out", text_dropout=0.1)


@pytest.mark.parametrize("method", ["mlm", "simcse"])
def test_tower_size_on_text_method_raises(method):
    with pytest.raises(ValueError, match=f"the clip text tower options text_encoder_width do not apply to {method}"):
        TrainConfig(method=method, data="texts.txt", out="out", text_encoder_width=64)


def test_invalid_flag_exits_with_message(capsys):
    assert train_main([*REQUIRED, "--text-dropout", "1"]) == 2
    assert "text_dropout must be a number in [0, 1), got 1.0" in capsys.readouterr().err


def test_help_names_methods_and_defaults():
    helps = {action.dest: action.help for action in _train_parser()._actions}
    assert f"mlm and simcse (default {TextMethod.default_dropout}" in helps["text_dropout"]
    assert f"clip's text tower (default {TEXT_TOWER_DEFAULTS['text_dropout']};" in helps["text_dropout"]
    assert f"clip's text tower (default {TEXT_TOWER_DEFAULTS['text_encoder_width']})" in helps["text_encoder_width"]
    assert f"clip's text tower (default {TEXT_TOWER_DEFAULTS['text_encoder_depth']})" in helps["text_encoder_depth"]
    assert f"clip's text tower (default {TEXT_TOWER_DEFAULTS['text_heads']})" in helps["text_heads"]


@pytest.mark.parametrize("method_class", [SimCSE, MaskedLanguageModel])
def test_text_dropout_reaches_encoder(tmp_path, method_class):
    config = TrainConfig(method=method_class.name, data="texts.txt", out=str(tmp_path / "out"), text_dropout=0.25, **SMALL_TEXT)
    method = method_class.from_data(config, text_dataset())
    assert dropouts(method.encoder) == {0.25}
    assert method.architecture["kwargs"]["dropout"] == 0.25


@pytest.mark.parametrize("method_class", [SimCSE, MaskedLanguageModel])
def test_text_methods_default_dropout(tmp_path, method_class):
    config = TrainConfig(method=method_class.name, data="texts.txt", out=str(tmp_path / "out"), **SMALL_TEXT)
    method = method_class.from_data(config, text_dataset())
    assert dropouts(method.encoder) == {0.1}


def test_simcse_rejects_zero_text_dropout(tmp_path):
    config = TrainConfig(method="simcse", data="texts.txt", out=str(tmp_path / "out"), text_dropout=0.0, **SMALL_TEXT)
    with pytest.raises(ValueError, match="simcse needs dropout"):
        SimCSE.from_data(config, text_dataset())


@pytest.fixture
def mlm_checkpoint(tmp_path) -> str:
    """Save a tiny MLM method (width 16, depth 1, 2 heads) as a checkpoint to start from."""
    mlm = MaskedLanguageModel.from_data(TrainConfig(method="mlm", data="texts.txt", out="out", **SMALL_TEXT), text_dataset())
    path = tmp_path / "mlm.pt"
    torch.save({"method": mlm.state_dict(), "method_extra": mlm.extra_state_for_checkpoint()}, path)
    return str(path)


def test_text_dropout_reaches_warm_start(mlm_checkpoint):
    config = TrainConfig(method="simcse", data="texts.txt", out="out", init_from=mlm_checkpoint, text_dropout=0.3)
    simcse = SimCSE.from_data(config, text_dataset())
    assert dropouts(simcse.encoder) == {0.3}


def test_clip_warm_start_takes_dropout(tmp_path, digits, mlm_checkpoint):
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", init_from=mlm_checkpoint, text_dropout=0.2, **TINY_IMAGE)
    method = CLIP.from_data(config, digit_pairs(digits))
    assert dropouts(method.text_encoder.inner) == {0.2}


def test_clip_warm_start_warns_on_sizes(tmp_path, digits, mlm_checkpoint, caplog):
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", init_from=mlm_checkpoint, **TOWER, **TINY_IMAGE)
    with caplog.at_level(logging.WARNING, logger="training.methods.clip"):
        method = CLIP.from_data(config, digit_pairs(digits))
    assert method.text_encoder.inner.feature_dim == 16
    assert "ignoring text_encoder_width 24, text_encoder_depth 3, text_heads 6" in caplog.text
    assert "(text_encoder_width 16, text_encoder_depth 1, text_heads 2)" in caplog.text


def test_clip_warm_start_matching_sizes_silent(tmp_path, digits, mlm_checkpoint, caplog):
    sizes = {"text_encoder_width": 16, "text_encoder_depth": 1, "text_heads": 2}
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", init_from=mlm_checkpoint, **sizes, **TINY_IMAGE)
    with caplog.at_level(logging.WARNING, logger="training.methods.clip"):
        CLIP.from_data(config, digit_pairs(digits))
    assert caplog.records == []


def test_clip_text_tower_sizes(tmp_path, digits):
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", max_tokens=8, text_dropout=0.2, **TOWER, **TINY_IMAGE)
    method = CLIP.from_data(config, digit_pairs(digits))
    tower = method.text_encoder.inner
    assert tower.feature_dim == 24
    assert len(tower.blocks) == 3
    assert {block.attention.heads for block in tower.blocks} == {6}
    assert dropouts(tower) == {0.2}


def test_clip_text_tower_defaults(tmp_path, digits):
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", max_tokens=8, **TINY_IMAGE)
    kwargs = CLIP.from_data(config, digit_pairs(digits)).text_inner["kwargs"]
    assert kwargs["width"] == TEXT_TOWER_DEFAULTS["text_encoder_width"]
    assert kwargs["depth"] == TEXT_TOWER_DEFAULTS["text_encoder_depth"]
    assert kwargs["heads"] == TEXT_TOWER_DEFAULTS["text_heads"]
    assert kwargs["dropout"] == TEXT_TOWER_DEFAULTS["text_dropout"]


def test_clip_heads_must_divide_default_width(tmp_path, digits):
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", text_heads=3, **TINY_IMAGE)
    with pytest.raises(ValueError, match="clip's text tower width 128 must be divisible by its 3 heads"):
        CLIP.from_data(config, digit_pairs(digits))


def test_shipped_simcse_command_rebuilds_architecture():
    config, _ = parse_train_args(recorded_argv("debian-simcse"))
    method = SimCSE.from_data(config, text_dataset())
    shipped = json.loads((ROOT / "models" / "debian-simcse" / "model.json").read_text())["architecture"]
    assert without_vocab_size(method.architecture) == without_vocab_size(shipped)


def test_shipped_clip_command_rebuilds_architecture(digits):
    config, _ = parse_train_args(recorded_argv("glyphs-clip-text"))
    method = CLIP.from_data(config, digit_pairs(digits))
    shipped_text = json.loads((ROOT / "models" / "glyphs-clip-text" / "model.json").read_text())["architecture"]
    shipped_image = json.loads((ROOT / "models" / "glyphs-clip-image" / "model.json").read_text())["architecture"]
    assert without_vocab_size(method.text_architecture["kwargs"]["inner"]) == without_vocab_size(shipped_text["kwargs"]["inner"])
    assert method.text_architecture["kwargs"]["embedding_dim"] == shipped_text["kwargs"]["embedding_dim"]
    assert method.image_architecture == shipped_image



def test_legacy_dropout_ignored_for_image_method(caplog):
    with caplog.at_level(logging.WARNING, logger="training.config"):
        config = TrainConfig(method="simclr", data="digits", out="out", extra={"text_dropout": 0.1})
    assert config.text_dropout is None
    assert "ignoring extra.text_dropout: it does not apply to simclr" in caplog.text


def test_legacy_tower_size_ignored_for_simcse():
    config = TrainConfig(method="simcse", data="texts.txt", out="out", extra={"text_encoder_width": 64})
    assert config.text_encoder_width is None


def test_null_top_level_beside_legacy_extra(tmp_path):
    values = read_config_file(write_config(tmp_path, {"text_dropout": None, "extra": {"text_dropout": 0.3}}))
    assert TrainConfig(method="simcse", data="texts.txt", out="out", **values).text_dropout == 0.3


def test_clip_warm_start_from_projected_tower_raises(tmp_path, digits):
    init_from = str(ROOT / "models" / "glyphs-clip-text")
    config = tiny_config(tmp_path, "clip", caption_rule="the digit {label}", init_from=init_from, **TINY_IMAGE)
    with pytest.raises(ValueError, match="text_transformer"):
        CLIP.from_data(config, digit_pairs(digits))
