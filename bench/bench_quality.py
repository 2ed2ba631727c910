"""Embedding quality of every image method on glyphs, beside random-init and raw-pixel baselines.

For each method (simclr, byol, mae, rotation, jigsaw, inpainting), ``training.trainer.train``
trains an encoder on ``glyphs-train.npz`` and exports it to a temporary folder. Then
``ssl-eval``'s ``evaluate_artifact`` measures it on ``glyphs-test.npz`` with the train split
as reference:

- kNN top-1: cosine, k=20, similarity-weighted votes;
- linear probe: logistic regression on standardised embeddings of all train labels;
- 5 labels per class: the same probe on 5 train images per letter, mean and std of 5 draws;
- one-class AUROC: each letter normal in turn, every test image scored by its mean cosine
  distance to the 5 nearest train images of that letter, mean over the letters.

Encoders: ResNet-18 with the small-image stem (3x3 stride-1 first convolution, no
max-pool) and base width 32, giving 256-dimensional embeddings, for every method but MAE.
MAE trains a ViT of width 192, depth 6 and 3 heads on 4 px patches (64 tokens), giving
192-dimensional embeddings. Letters change identity when mirrored or cut down to a stroke,
so no method flips and every crop keeps at least 40 % of the area. SimCLR and BYOL (both
views) use the ``fonts`` preset (crops, slant, thicker or thinner strokes, brightness and
contrast jitter, light blur). The
reconstruction and pretext methods use the ``crop`` preset (crops only). Every train image
trains the encoder (no hold-out), because the test split measures it.

Baselines from the same run:

- each architecture at random initialisation, exported and measured like the trained
  encoders, built with the same seed, so it is the state the trained runs start from;
- raw pixels scaled to [0, 1] (1024 features), measured with the same functions;
- raw pixels under scikit-learn's plain protocol: kNN with uniform votes, logistic
  regression on unscaled pixels, euclidean AUROC. On the full splits this row should come
  out near the raw-pixel baselines published with the glyphs data set (test: kNN 0.913,
  logistic regression 0.918, 5 labels 0.708 +- 0.027, AUROC 0.924). ``--quick`` leaves this
  row out: on a subset it has nothing to compare with, and its unscaled probes converge
  slowly.

Budget: one epoch of the six methods is about 125 TFLOP of training, and embedding both
splits with eight encoders about 45 TFLOP more, as counted by torch's FlopCounterMode. The
script logs the counts for its own settings. At an estimated 35 to 50 GFLOP/s on 2 CPU
cores that is 60 to 80 minutes, hence the default of 1 epoch. ``--method-epochs`` gives single
methods more (the recorded run gives SimCLR and BYOL several), and ``--epochs`` all of them
on a GPU.

    python -m bench.bench_quality                 # full: 6 methods, 1 epoch each
    python -m bench.bench_quality --quick         # simclr and rotation, 1000 train and 1000 test images, width 8
    python -m bench.bench_quality --methods simclr mae --epochs 100 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.artifacts import REPO_ROOT
from bench.common import write_result
from bench.logs import configure_logging

logger = logging.getLogger("bench.quality")

GLYPHS_DIR = REPO_ROOT.parent / "shared" / "data" / "glyphs"
TRAIN_FILE = "glyphs-train.npz"
TEST_FILE = "glyphs-test.npz"
LETTERS = "ABCDEFGHIJ"
IMAGE_METHODS = ("simclr", "byol", "mae", "rotation", "jigsaw", "inpainting")
QUICK_METHODS = ("simclr", "rotation")
# Settings whose default depends on the mode: name -> (full, --quick).
MODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "methods": (list(IMAGE_METHODS), list(QUICK_METHODS)),
    "width": (32, 8),
    "vit_width": (192, 48),
    "limit": (None, 1000),
}
AUGMENTATIONS = {
    "simclr": "fonts", "byol": "fonts", "mae": "crop", "rotation": "crop", "jigsaw": "crop", "inpainting": "crop",
}
# ssl-eval's settings, written out so that the record does not depend on its defaults.
KNN_K = 20
SHOTS = 5
DRAWS = 5
ANOMALY_K = 5
# NOTE: an estimate, not a measurement. The width-8 SimCLR step of
# `python -m bench.bench_training --quick` ran at 16 to 19 GFLOP/s on 2 AMD EPYC cores,
# and the wider convolutions of width 32 use the cores better. The log replaces it with
# the rate measured after the first method.
ESTIMATED_CPU_GFLOPS = 35.0


# --- training and evaluation of one encoder ------------------------------------------------


def epochs_for(method: str, args: argparse.Namespace) -> int:
    """Return the training epochs of ``method``: its ``--method-epochs`` entry, else ``--epochs``."""
    return args.method_epochs.get(method, args.epochs)


def train_argv(method: str, args: argparse.Namespace, folder: Path) -> list[str]:
    """Return the ``ssl-train`` arguments that train ``method`` as this benchmark does."""
    width = args.vit_width if method == "mae" else args.width
    argv = [
        "--method", method, "--data", str(args.data_dir / TRAIN_FILE), "--out", str(folder / f"glyphs-{method}"),
        "--run-dir", str(folder / f"run-{method}"), "--epochs", str(epochs_for(method, args)), "--batch-size", str(args.batch_size),
        "--encoder-width", str(width), "--augment", AUGMENTATIONS[method], "--holdout-fraction", "0",
        "--seed", str(args.seed), "--device", args.device,
    ]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    return argv


def eval_args(artifact: Path, args: argparse.Namespace) -> argparse.Namespace:
    """Return the parsed ``ssl-eval`` arguments that measure ``artifact`` on the glyphs test split."""
    from training.cli import _eval_parser  # the one definition of ssl-eval's options and defaults

    argv = [
        str(artifact), "--data", str(args.data_dir / TEST_FILE), "--train-data", str(args.data_dir / TRAIN_FILE),
        "--k", str(KNN_K), "--shots", str(SHOTS), "--draws", str(DRAWS), "--anomaly-k", str(ANOMALY_K),
        "--device", args.device, "--seed", str(args.seed),
    ]
    if args.limit is not None:
        argv += ["--limit", str(args.limit)]
    return _eval_parser().parse_args(argv)


def quality_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return the benchmark's fields from ``ssl-eval`` metrics, per-letter AUROC keyed by letter."""
    few_label = f"linear_probe_{SHOTS}_per_class"
    return {
        "knn_top1": metrics[f"knn_top1_k{KNN_K}"],
        "linear_probe": metrics["linear_probe"],
        "linear_probe_few_labels": metrics[few_label],
        "linear_probe_few_labels_std": metrics[f"{few_label}_std"],
        "one_class_auroc_mean": metrics["one_class_auroc_mean"],
        "one_class_auroc": {LETTERS[int(label)]: value for label, value in metrics["one_class_auroc"].items()},
    }


def describe_architecture(architecture: dict[str, Any]) -> str:
    """Return a short description of an artifact's ``architecture`` entry, such as 'ResNet-18, width 32'."""
    kwargs = architecture["kwargs"]
    if architecture["name"] == "resnet":
        stem = ", small-image stem" if kwargs.get("small_stem") else ""
        return f"ResNet-{kwargs['depth']}{stem}, width {kwargs['width']}"
    if architecture["name"] == "vit":
        return f"ViT, width {kwargs['width']}, depth {kwargs['depth']}, {kwargs['heads']} heads, {kwargs['patch_size']} px patches"
    return architecture["name"]


def measure_artifact(artifact: Path, args: argparse.Namespace) -> tuple[dict[str, Any], float]:
    """Return the quality metrics of ``artifact`` and the seconds they took."""
    from training.eval_run import evaluate_artifact

    started = time.perf_counter()
    metrics = evaluate_artifact(eval_args(artifact, args))
    return quality_metrics(metrics), time.perf_counter() - started


def run_method(method: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Train, export and measure ``method`` and return its row."""
    from training.cli import parse_train_args
    from training.trainer import train

    argv = train_argv(method, args, folder)
    config, _ = parse_train_args(argv)
    logger.info("%s: training %d epoch(s), augmentation %s", method, config.epochs, config.augment)
    started = time.perf_counter()
    artifact = train(config, argv)[0]
    train_seconds = time.perf_counter() - started

    meta = json.loads((artifact / "model.json").read_text(encoding="utf-8"))
    logger.info("%s: trained in %.0f s, measuring", method, train_seconds)
    metrics, eval_seconds = measure_artifact(artifact, args)
    return {
        "model": method,
        "kind": "trained",
        "encoder": describe_architecture(meta["architecture"]),
        "embedding_dim": meta["embedding_dim"],
        "augmentation": config.augment,
        "epochs": config.epochs,
        "steps": meta["training"]["steps"],
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        **metrics,
        "final_epoch": {key: value for key, value in meta["metrics"].items() if key != "train_seconds"},
    }


def export_random_init(method: str, args: argparse.Namespace, folder: Path) -> Path:
    """Export the encoder of ``method`` as built before its first step, without training it."""
    from training.artifact import export_artifact
    from training.cli import parse_train_args
    from training.methods import method_class
    from training.trainer import load_dataset, seed_everything

    config, _ = parse_train_args(train_argv(method, args, folder))
    # the same seed and calls as training.trainer.train before its first step
    seed_everything(config.seed)
    dataset = load_dataset(config)
    if config.limit is not None:
        dataset = dataset.subset(torch.arange(min(config.limit, len(dataset))))
    spec = method_class(method).from_data(config, dataset).export_specs()[0]
    name = f"random-init-{spec.architecture['name']}"
    meta = {
        "name": name,
        "modality": spec.modality,
        "architecture": spec.architecture,
        "embedding_dim": spec.embedding_dim,
        "preprocessing": spec.preprocessing,
        "normalize": True,
        "method": "none",
        "space": name,
        "training": {"epochs": 0, "steps": 0, "seed": config.seed, "initialised_as": method},
    }
    return export_artifact(folder / name, spec.encoder, meta)


def run_random_init(method: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Measure the untrained encoder of ``method`` and return its row."""
    artifact = export_random_init(method, args, folder)
    meta = json.loads((artifact / "model.json").read_text(encoding="utf-8"))
    logger.info("random init (%s): measuring", meta["architecture"]["name"])
    metrics, eval_seconds = measure_artifact(artifact, args)
    return {
        "model": "random init",
        "kind": "random_init",
        "encoder": describe_architecture(meta["architecture"]),
        "embedding_dim": meta["embedding_dim"],
        "epochs": 0,
        "steps": 0,
        "eval_seconds": round(eval_seconds, 1),
        **metrics,
    }


# --- raw pixels ------------------------------------------------------------------------------


def load_split(args: argparse.Namespace, file_name: str) -> Any:
    """Load one glyphs split, cut to ``--limit`` images as ssl-train and ssl-eval cut it."""
    from training.data import load_image_dataset

    dataset = load_image_dataset(str(args.data_dir / file_name))
    if args.limit is not None:
        dataset = dataset.subset(torch.arange(min(args.limit, len(dataset))))
    return dataset


def pixel_features(dataset: Any) -> np.ndarray:
    """Return the pixels of uint8 images (N, C, H, W) as float features (N, C*H*W) in [0, 1]."""
    return dataset.images.flatten(1).float().div(255.0).numpy()


def few_label_indices(labels: np.ndarray, shots: int, draw: int) -> np.ndarray:
    """Return ``shots`` indices per class, drawn with seed ``draw`` as ssl-eval's few-label probe draws them."""
    rng = np.random.default_rng(draw)
    return np.concatenate([
        rng.choice(np.flatnonzero(labels == label), size=min(shots, int((labels == label).sum())), replace=False)
        for label in np.unique(labels)
    ])


def plain_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Return the test accuracy of scikit-learn's default logistic regression (no standardisation)."""
    from sklearn.linear_model import LogisticRegression

    return float(LogisticRegression(max_iter=2000).fit(train_x, train_y).score(test_x, test_y))


def plain_pixel_metrics(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> dict[str, Any]:
    """Return the metrics under scikit-learn's plain protocol: uniform kNN, unscaled probes, euclidean AUROC."""
    from training.evaluate import knn_accuracy, one_class_auroc

    few_label = []
    for draw in range(DRAWS):
        indices = few_label_indices(train_y, SHOTS, draw)
        few_label.append(plain_probe_accuracy(train_x[indices], train_y[indices], test_x, test_y))
    auroc = one_class_auroc(train_x, train_y, test_x, test_y, k=ANOMALY_K, metric="l2")
    return {
        "knn_top1": knn_accuracy(train_x, train_y, test_x, test_y, k=KNN_K, weighted=False),
        "linear_probe": plain_probe_accuracy(train_x, train_y, test_x, test_y),
        "linear_probe_few_labels": float(np.mean(few_label)),
        "linear_probe_few_labels_std": float(np.std(few_label)),
        "one_class_auroc_mean": auroc["mean"],
        "one_class_auroc": {LETTERS[label]: value for label, value in auroc["per_class"].items()},
    }


def pixel_rows(train_data: Any, test_data: Any, plain_protocol: bool) -> list[dict[str, Any]]:
    """Return the raw-pixel row under ssl-eval's metrics and, with ``plain_protocol``, one under scikit-learn's plain protocol."""
    from training.eval_run import supervised_metrics

    train_x, train_y = pixel_features(train_data), train_data.labels.numpy()
    test_x, test_y = pixel_features(test_data), test_data.labels.numpy()
    encoder = f"{train_x.shape[1]} pixels in [0, 1]"

    logger.info("raw pixels: measuring with ssl-eval's metrics")
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    settings = argparse.Namespace(k=KNN_K, shots=SHOTS, draws=DRAWS, anomaly_k=ANOMALY_K)
    metrics = supervised_metrics(train_x, train_y, test_x, test_y, settings, skipped)
    row = {"model": "raw pixels", "kind": "raw_pixels", "encoder": encoder, "eval_seconds": round(time.perf_counter() - started, 1)}
    rows = [{**row, **quality_metrics(metrics)}]
    if not plain_protocol:
        return rows

    logger.info("raw pixels: measuring with uniform kNN, unscaled probes and euclidean AUROC")
    started = time.perf_counter()
    plain_metrics = plain_pixel_metrics(train_x, train_y, test_x, test_y)
    plain = {
        "model": "raw pixels, plain protocol",
        "kind": "raw_pixels_plain",
        "encoder": encoder,
        "protocol": "kNN with uniform votes, logistic regression on unscaled pixels, euclidean AUROC",
        "eval_seconds": round(time.perf_counter() - started, 1),
    }
    return [*rows, {**plain, **plain_metrics}]


# --- budget ----------------------------------------------------------------------------------


def flops_per_image(method: str, args: argparse.Namespace, train_data: Any, folder: Path) -> tuple[float, float]:
    """Return the FLOPs per image of one training step and of one embedding of ``method``.

    torch's FlopCounterMode counts matrix products and convolutions (not element-wise
    work) on one step over 4 training images.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from training.cli import parse_train_args
    from training.methods import method_class

    config, _ = parse_train_args(train_argv(method, args, folder))
    built = method_class(method).from_data(config, train_data)
    images = train_data.batch(torch.arange(4), torch.device("cpu"))
    built.train()
    with FlopCounterMode(display=False) as counter:
        built.training_step(images, torch.Generator().manual_seed(0))["loss"].backward()
    train_flops = counter.get_total_flops() / len(images)
    built.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        built.embed(images)
    return train_flops, counter.get_total_flops() / len(images)


def plan_budget(
    methods: list[str], baselines: list[str], args: argparse.Namespace, train_data: Any, test_data: Any, folder: Path
) -> dict[str, float]:
    """Return the TFLOP of every stage (``train:M``, ``embed:M``, ``random_init:M``) and log the total."""
    embedded = len(train_data) + len(test_data)
    plan: dict[str, float] = {}
    for method in dict.fromkeys([*methods, *baselines]):
        train_flops, embed_flops = flops_per_image(method, args, train_data, folder)
        if method in methods:
            plan[f"train:{method}"] = train_flops * len(train_data) * epochs_for(method, args) / 1e12
            plan[f"embed:{method}"] = embed_flops * embedded / 1e12
        if method in baselines:
            plan[f"random_init:{method}"] = embed_flops * embedded / 1e12
    total = sum(plan.values())
    logger.info(
        "budget: %d method(s), %d epoch(s) in all, of %d images, %.1f TFLOP training and %.1f TFLOP embedding, "
        "about %.0f min at an estimated %.0f GFLOP/s of 2 CPU cores, plus the probes",
        len(methods), sum(epochs_for(method, args) for method in methods), len(train_data),
        sum(value for key, value in plan.items() if key.startswith("train:")),
        sum(value for key, value in plan.items() if not key.startswith("train:")),
        total * 1e3 / ESTIMATED_CPU_GFLOPS / 60, ESTIMATED_CPU_GFLOPS,
    )
    return plan


def log_remaining(plan: dict[str, float], done: list[str], started: float) -> None:
    """Log the time left at the FLOP rate measured so far."""
    finished = sum(plan[key] for key in done if key in plan)
    left = sum(value for key, value in plan.items() if key not in done)
    elapsed = time.perf_counter() - started
    if finished <= 0 or elapsed <= 0:
        return
    rate = finished * 1e3 / elapsed  # GFLOP/s
    logger.info("%.0f s so far at %.1f GFLOP/s, about %.0f min left", elapsed, rate, left * 1e3 / rate / 60)


# --- report ----------------------------------------------------------------------------------


def markdown_table(rows: list[dict[str, Any]], train_size: int, test_size: int, command: str) -> str:
    """Return the rows as a markdown table with a line that states the protocol."""
    lines = [
        "| model | encoder | epochs | train s | kNN top-1 | linear probe | 5 labels per class | one-class AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error']} | | | | | | |")
            continue
        train_seconds = f"{row['train_seconds']:.0f}" if "train_seconds" in row else ""
        few_label = f"{row['linear_probe_few_labels']:.3f} ± {row['linear_probe_few_labels_std']:.3f}"
        lines.append(
            f"| {row['model']} | {row['encoder']} | {row.get('epochs', '')} | {train_seconds} | {row['knn_top1']:.3f} "
            f"| {row['linear_probe']:.3f} | {few_label} | {row['one_class_auroc_mean']:.3f} |"
        )
    protocol = (
        f"Glyphs test split ({test_size} images) against the train split ({train_size} images). kNN: cosine, k={KNN_K}, "
        "similarity-weighted votes. Probes: logistic regression on standardised features, the few-label one "
        f"mean ± std of {DRAWS} draws. AUROC: mean cosine distance to the {ANOMALY_K} nearest train images of the "
        "normal letter, mean over the 10 letters."
    )
    if any(row.get("kind") == "raw_pixels_plain" for row in rows):
        protocol += " The plain-protocol pixel row uses uniform votes, unscaled pixels and euclidean distance instead."
    lines += ["", f"{protocol} Command: `{command}`."]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="simclr and rotation, 1000 train and 1000 test images, width 8, ViT width 48, no plain-protocol pixel row")
    parser.add_argument("--methods", nargs="+", choices=IMAGE_METHODS, help="methods to train (default: all six; --quick: simclr and rotation)")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs per method (default: 1)")
    parser.add_argument(
        "--method-epochs", nargs="+", default=[], metavar="METHOD=N",
        help="epochs for single methods, overriding --epochs, such as simclr=6 byol=5",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="images per training step (default: 256)")
    parser.add_argument("--width", type=int, help="base width of the ResNet-18 (default: 32, --quick: 8)")
    parser.add_argument("--vit-width", type=int, help="width of MAE's ViT, a multiple of 12 (default: 192, --quick: 48)")
    parser.add_argument("--limit", type=int, help="use the first N images of each split (default: all, --quick: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialisation, data order and augmentations")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", type=Path, default=GLYPHS_DIR, help=f"folder that contains {TRAIN_FILE} and {TEST_FILE}")
    args = parser.parse_args()

    for name, (full, quick) in MODE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.method_epochs = parse_method_epochs(parser, args.method_epochs)
    not_run = sorted(set(args.method_epochs) - set(args.methods))
    if not_run:
        parser.error(f"--method-epochs names {', '.join(not_run)}, which --methods leaves out")
    if args.epochs < 1 or args.batch_size < 2 or args.width < 1:
        parser.error(f"--epochs and --width must be at least 1 and --batch-size at least 2, got {args.epochs}, {args.width} and {args.batch_size}")
    if args.vit_width < 12 or args.vit_width % 12:
        parser.error(f"--vit-width must be a positive multiple of 12 (3 heads, and its sine-cosine positions need a multiple of 4), got {args.vit_width}")
    if args.limit is not None and args.limit < 2:
        parser.error(f"--limit must be at least 2, got {args.limit}")
    for name in (TRAIN_FILE, TEST_FILE):
        if not (args.data_dir / name).is_file():
            parser.error(f"{args.data_dir / name} does not exist; pass --data-dir, the folder of the glyphs data set")
    return args


def parse_method_epochs(parser: argparse.ArgumentParser, entries: list[str]) -> dict[str, int]:
    """Return ``--method-epochs`` entries such as ``simclr=6`` as a dict, or stop with a usage error."""
    epochs: dict[str, int] = {}
    for entry in entries:
        method, _, count = entry.partition("=")
        if method not in IMAGE_METHODS or not count.isdigit() or int(count) < 1:
            parser.error(f"--method-epochs takes METHOD=N with METHOD one of {', '.join(IMAGE_METHODS)} and N at least 1, got {entry!r}")
        epochs[method] = int(count)
    return epochs


def command_line(args: argparse.Namespace) -> str:
    """Return the command that reproduces this run; options at their mode's defaults are left out."""
    parts = ["python -m bench.bench_quality"]
    defaults = {name: modes[1] if args.quick else modes[0] for name, modes in MODE_DEFAULTS.items()}
    defaults.update(epochs=1, method_epochs={}, batch_size=256, seed=0, device="auto", data_dir=GLYPHS_DIR)
    for name, default in defaults.items():
        value = getattr(args, name)
        if value == default:
            continue
        if isinstance(value, dict):
            argument = " ".join(f"{key}={count}" for key, count in value.items())
        elif isinstance(value, list):
            argument = " ".join(value)
        else:
            argument = str(value)
        parts.append(f"--{name.replace('_', '-')} {argument}")
    if args.quick:
        parts.append("--quick")
    return " ".join(parts)


def random_init_methods(methods: list[str]) -> list[str]:
    """Return one method per encoder architecture among ``methods``, whose untrained encoder is a baseline."""
    resnet = [method for method in methods if method != "mae"]
    return resnet[:1] + (["mae"] if "mae" in methods else [])


def run_encoders(args: argparse.Namespace, plan: dict[str, float], baselines: list[str], folder: Path) -> list[dict[str, Any]]:
    """Return the rows of the trained methods and of the random-init baselines, in that order."""
    from training.artifact import ArtifactError
    from training.trainer import NonFiniteLossError

    started = time.perf_counter()
    done: list[str] = []
    rows = []
    jobs = [(method, method, run_method, [f"train:{method}", f"embed:{method}"]) for method in args.methods]
    jobs += [("random init", method, run_random_init, [f"random_init:{method}"]) for method in baselines]
    for model, method, job, stages in jobs:
        try:
            rows.append(job(method, args, folder))
        except (NonFiniteLossError, ValueError, ArtifactError) as error:
            logger.error("%s (%s) failed: %s", model, method, error)
            rows.append({"model": model, "method": method, "error": str(error)})
        done += stages
        log_remaining(plan, done, started)
    return rows


def main() -> None:
    args = parse_args()
    configure_logging(logging.INFO)
    started = time.perf_counter()
    train_data = load_split(args, TRAIN_FILE)
    test_data = load_split(args, TEST_FILE)
    baselines = random_init_methods(args.methods)

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as temporary:
        folder = Path(temporary)
        plan = plan_budget(args.methods, baselines, args, train_data, test_data, folder)
        rows = run_encoders(args, plan, baselines, folder)
    rows += pixel_rows(train_data, test_data, plain_protocol=not args.quick)

    command = command_line(args)
    markdown = markdown_table(rows, len(train_data), len(test_data), command)
    record = {
        "command": command,
        "settings": {
            "methods": args.methods, "epochs": {method: epochs_for(method, args) for method in args.methods},
            "batch_size": args.batch_size, "resnet_width": args.width,
            "vit_width": args.vit_width, "train_images": len(train_data), "test_images": len(test_data), "seed": args.seed,
            "device": args.device, "augmentations": {method: AUGMENTATIONS[method] for method in args.methods},
            "knn_k": KNN_K, "shots": SHOTS, "draws": DRAWS, "anomaly_k": ANOMALY_K,
        },
        "budget_tflop": {key: round(value, 3) for key, value in plan.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "markdown": markdown,
    }
    if args.quick:
        record["note"] = "quick mode: the numbers only show that every step runs, not how well the methods learn"
    path = write_result("quality-quick" if args.quick else "quality", record)
    print(json.dumps({"rows": rows, "markdown": markdown, "record": str(path)}, indent=2))
    failed = [row["model"] for row in rows if "error" in row]
    if failed:
        logger.error("rows that failed: %s", ", ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
