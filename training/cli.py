"""Command-line entry points ``ssl-train`` and ``ssl-eval``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from training.config import METHOD_NAMES, TrainConfig, read_config_file

logger = logging.getLogger("training")

# Flags with their own help text; every other TrainConfig field becomes --field-name.
FLAG_HELP = {
    "method": f"self-supervised method: {', '.join(METHOD_NAMES)}",
    "data": "'digits', a folder of images, an .npz with 'images' (and 'labels'), a .txt or a .jsonl(.gz)",
    "out": "artifact folder to write, such as models/NAME (clip writes NAME-image and NAME-text)",
    "epochs": "passes over the training data",
    "lr": "peak learning rate after warm-up (default: the method's)",
    "encoder": "encoder architecture: resnet, vit, mlp (images) or text_transformer",
    "embedding_dim": "width of the exported embedding (default: the encoder's feature width)",
    "seed": "seed for initialisation, data order and augmentations",
    "device": "auto, cpu, cuda or cuda:N",
    "resume": "checkpoint file, run folder, or 'auto' for the newest checkpoint of this run",
    "batch_size": "samples per optimiser step, summed over all ranks under torchrun",
    "precision": "auto (bf16 on CUDA when supported, else fp16; fp32 on CPU), fp32, bf16 or fp16",
    "checkpoint_every": "save a checkpoint every this many steps (also on SIGTERM/SIGINT and at the end)",
    "keep_checkpoints": "number of newest checkpoints to keep (0 keeps all)",
    "log_every": "log a progress line every this many steps",
    "grad_clip": "clip the global gradient norm to this value (0 turns clipping off)",
    "augment": "augmentation preset, such as simclr, byol, glyphs, fonts or crop (default: the method's)",
    "crop_scale_min": "smallest crop area fraction, overriding the preset's",
    "horizontal_flip_prob": "probability of a horizontal flip, overriding the preset's",
    "shear": "largest horizontal slant factor of a view, overriding the preset's (fonts: 0.3)",
    "morphology_prob": "share of views whose strokes are thickened or thinned by one pixel, overriding the preset's (fonts: 0.5)",
    "predictor_lr_scale": "learning rate of BYOL's prediction head as a multiple of the schedule's (default 30)",
    "sync_batch_norm": "synchronise BatchNorm statistics across ranks under torchrun (CUDA only)",
    "text_dropout": (
        "dropout of the text encoder, in [0, 1): mlm and simcse (default 0.1, as in BERT; "
        "simcse needs more than 0) and clip's text tower (default 0.0; with --init-from, the pretrained encoder's)"
    ),
    "text_encoder_width": "width of clip's text tower (default 128); mlm and simcse use --encoder-width",
    "text_encoder_depth": "transformer blocks in clip's text tower (default 2); mlm and simcse use --encoder-depth",
    "text_heads": "attention heads in clip's text tower (default 4), a divisor of its width; mlm and simcse use --heads",
}


def configure_logging(level: str = "INFO") -> None:
    """Log to stderr; under torchrun, ranks other than 0 log warnings and errors only."""
    rank = int(os.environ.get("RANK", "0"))
    numeric_level = getattr(logging, level.upper(), logging.INFO)
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(
        level=numeric_level if rank == 0 else max(numeric_level, logging.WARNING),
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        stream=sys.stderr,
    )


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-train", description="Train a self-supervised encoder and export an artifact.")
    parser.add_argument("--config", help="YAML, TOML or JSON file of options; flags override it")
    parser.add_argument("--run-dir", help="folder for checkpoints and metrics (default: runs/NAME)")
    parser.add_argument("--log-level", default="INFO")
    for spec in dataclasses.fields(TrainConfig):
        if spec.name == "extra":
            continue
        flag = "--" + spec.name.replace("_", "-")
        help_text = FLAG_HELP.get(spec.name, f"(default: {spec.default!r})" if spec.default is not dataclasses.MISSING else None)
        kind = _flag_type(spec)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)
    return parser


def _flag_type(spec: dataclasses.Field) -> Any:
    text = str(spec.type)
    if "bool" in text:
        return bool
    if "int" in text and "float" not in text:
        return int
    if "float" in text:
        return float
    return str


def parse_train_args(argv: list[str]) -> tuple[TrainConfig, argparse.Namespace]:
    args = _train_parser().parse_args(argv)
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    for name in TrainConfig.field_names() - {"extra"}:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    missing = [name for name in ("method", "data", "out") if name not in values]
    if missing:
        _train_parser().error("missing required options: " + ", ".join("--" + name for name in missing))
    if args.run_dir:
        values.setdefault("extra", {})["run_dir"] = args.run_dir
    return TrainConfig(**values), args


def train_main(argv: list[str] | None = None) -> int:
    """Entry point of ``ssl-train``; prints the artifact paths and metrics as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, args = parse_train_args(argv)
    except ValueError as error:
        print(f"ssl-train: error: {error}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    from training.trainer import NonFiniteLossError, TrainingInterrupted, train

    try:
        paths = train(config, argv)
    except TrainingInterrupted as interruption:
        return interruption.exit_code
    except NonFiniteLossError as error:
        logger.error("%s", error)
        return 1
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    if not paths:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    result = {"artifacts": [str(path) for path in paths], "metrics": json.loads((paths[0] / "model.json").read_text())["metrics"]}
    print(json.dumps(result))
    return 0


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-eval", description="Evaluate an artifact's frozen embeddings; prints one JSON object.")
    parser.add_argument("artifact", help="artifact folder, such as models/NAME")
    parser.add_argument("--data", required=True, help="evaluation data (same formats as ssl-train)")
    parser.add_argument("--train-data", help="labelled reference data for kNN, probes and banks (default: a split of --data)")
    parser.add_argument("--labels", help="for .jsonl data: the field that contains the label")
    parser.add_argument("--text-field", default="text", help="for .jsonl data: the field(s) that hold the text, joined with '+'")
    parser.add_argument("--k", type=int, default=20, help="neighbours for kNN accuracy")
    parser.add_argument("--shots", type=int, default=5, help="labels per class for the few-label probe")
    parser.add_argument("--draws", type=int, default=5, help="random draws for the few-label probe")
    parser.add_argument("--anomaly-k", type=int, default=5, help="neighbours for one-class anomaly scores")
    parser.add_argument("--limit", type=int, help="use at most this many samples of each split")
    parser.add_argument("--text-model", help="text artifact for zero-shot accuracy (default: one beside the model in its space)")
    parser.add_argument("--prompt", help="zero-shot prompt template over {label} and {letter}")
    parser.add_argument("--fine-tune", choices=("linear", "full"), help="also train a classifier: linear head on the frozen encoder, or the whole encoder")
    parser.add_argument("--fine-tune-epochs", type=int, default=20, help="epochs over the labelled reference samples")
    parser.add_argument("--fine-tune-lr", type=float, help="peak learning rate (default: 1e-2 linear, 1e-3 full)")
    parser.add_argument("--batch-size", type=int, default=128, help="samples per fine-tuning step")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed for the reference/evaluation split and fine-tuning")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def eval_main(argv: list[str] | None = None) -> int:
    """Entry point of ``ssl-eval``."""
    args = _eval_parser().parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level)
    from training.artifact import ArtifactError
    from training.eval_run import evaluate_artifact

    try:
        _check_eval_args(args)
        metrics = evaluate_artifact(args)
    except (ArtifactError, ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    print(json.dumps(metrics, allow_nan=False))
    return 0


def _check_eval_args(args: argparse.Namespace) -> None:
    for name in ("k", "shots", "draws", "anomaly_k", "fine_tune_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 2:
        raise ValueError(f"--limit must be at least 2, got {args.limit}")


if __name__ == "__main__":
    raise SystemExit(train_main())
