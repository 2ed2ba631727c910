"""Training speed and peak memory of every self-supervised method, each in a fresh process.

The methods are simclr, byol, mae, rotation, jigsaw and inpainting on images, mlm and
simcse on text, and clip on image-caption pairs, each where its module exists. For each,
a subprocess builds the method with its default encoder and settings and wraps it in
``training.trainer.Trainer``. It runs the trainer's real step (learning-rate schedule,
forward, backward, gradient clipping, optimiser step, momentum update) on random
batches: one untimed warm-up step, then timed steps until ``--steps`` or
``--max-seconds``. A fresh process per method keeps one
method's allocations out of the next one's peak memory.

Data: glyphs (32 px, 1 channel) from ``../shared/data/glyphs/glyphs-train.npz`` beside
the repository, else scikit-learn's digits upscaled to 32 px. Text: the Debian package
descriptions (``short`` + ``long``) from ``../shared/data/debian-descriptions``, else
the method is skipped. CLIP pairs glyphs with captions made by the ``glyphs`` caption
rule (digits: the ``letter`` rule).

Memory: ``peak_rss_mb`` is the process's maximum resident set size (getrusage), which
includes the interpreter, torch and the loaded data (``rss_before_steps_mb``).
``cuda_peak_mb`` is torch's peak allocation on a CUDA device.

    python -m bench.bench_methods            # full: batch 256, 10 timed steps or 60 s per method
    python -m bench.bench_methods --quick    # batch 32, 2 steps per method (warm-up and one timed)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.artifacts import REPO_ROOT
from bench.common import write_result
from bench.logs import configure_logging
from bench.plot import BarPanel, save_figure

logger = logging.getLogger("bench.methods")

GLYPHS = REPO_ROOT.parent / "shared" / "data" / "glyphs" / "glyphs-train.npz"
DESCRIPTIONS = REPO_ROOT.parent / "shared" / "data" / "debian-descriptions" / "train.jsonl.gz"
TEXT_FIELD = "short+long"
TEXT_METHODS = ("mlm", "simcse")
PAIR_METHODS = ("clip",)
IMAGE_SIZE = 32
WORKER_TIMEOUT_MARGIN_S = 300.0


# --- worker: one method in this process ---------------------------------------------------


def load_data(method: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Return the dataset ``method`` trains on and the config fields that describe it."""
    from training.config import TrainConfig
    from training.data import load_image_dataset, load_text_dataset
    from training.data_pairs import load_pair_dataset

    if method in TEXT_METHODS:
        if not args.text_data.is_file():
            raise FileNotFoundError(f"text data {args.text_data} does not exist")
        dataset = load_text_dataset(str(args.text_data), TEXT_FIELD)
        if args.text_limit and len(dataset) > args.text_limit:
            import torch

            dataset = dataset.subset(torch.arange(args.text_limit))
        return dataset, {"data": str(args.text_data), "text_field": TEXT_FIELD}

    glyphs = args.image_data.is_file()
    fields: dict[str, Any] = {"data": str(args.image_data)} if glyphs else {"data": "digits", "image_size": IMAGE_SIZE}
    if method in PAIR_METHODS:
        fields["caption_rule"] = "glyphs" if glyphs else "letter"
        config = TrainConfig(method=method, out="unused", **fields)
        return load_pair_dataset(config), fields
    return load_image_dataset(fields["data"], fields.get("image_size")), fields


def current_rss_mb() -> float:
    """Return this process's resident set size now, in MB (Linux /proc; 0.0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Return this process's maximum resident set size so far, in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.worker`` for a few steps and return its speed and memory."""
    import torch

    from training.config import TrainConfig
    from training.methods import method_class
    from training.trainer import Trainer, seed_everything

    method_name = args.worker
    seed_everything(0)
    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    dataset, fields = load_data(method_name, args)
    with tempfile.TemporaryDirectory(prefix=f"bench-{method_name}-") as run_dir:
        config = TrainConfig(
            method=method_name, out=str(Path(run_dir) / "out"), batch_size=args.batch_size, epochs=1,
            log_every=10**9, checkpoint_every=10**9, device=str(device), precision=args.precision, **fields,
        )
        method = method_class(method_name).from_data(config, dataset)
        trainer = Trainer(config, method, dataset, None, device, Path(run_dir))
        batch_size = trainer.batch_size
        order = torch.Generator().manual_seed(0)

        def step() -> dict[str, float]:
            losses = trainer.train_step(torch.randperm(len(dataset), generator=order)[:batch_size])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return losses

        rss_before = current_rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step()  # warm-up: first-call allocations and kernel choices stay out of the timing
        times: list[float] = []
        deadline = time.perf_counter() + args.max_seconds
        while len(times) < args.steps and (not times or time.perf_counter() < deadline):
            started = time.perf_counter()
            losses = step()
            times.append(time.perf_counter() - started)

    parameters = sum(parameter.numel() for parameter in method.parameters())
    return {
        "method": method_name,
        "modality": method.modality,
        "data": fields["data"],
        "samples": len(dataset),
        "batch_size": batch_size,
        "timed_steps": len(times),
        "step_s_median": round(statistics.median(times), 4),
        "samples_per_s": round(batch_size * len(times) / sum(times), 1),
        "parameters": parameters,
        "loss": round(losses["loss"], 4),
        "rss_before_steps_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "device": str(device),
        "precision": "fp32" if trainer.autocast_dtype is None else str(trainer.autocast_dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
    }


# --- parent: one subprocess per method ---------------------------------------------------


QUICK_METHODS = ["simclr", "mae", "simcse"]


def available_methods() -> list[str]:
    """Return the names of the methods whose modules import."""
    from training.methods import METHODS, method_class

    names = []
    for name in METHODS:
        try:
            method_class(name)
        except ValueError as error:
            logger.warning("skipping %s: %s", name, error)
            continue
        names.append(name)
    return names


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``method`` in a fresh Python process and return its JSON row, or a row with the error that stopped it."""
    command = [
        sys.executable, "-m", "bench.bench_methods", "--worker", method,
        "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--max-seconds", str(args.max_seconds),
        "--device", args.device, "--image-data", str(args.image_data), "--text-data", str(args.text_data),
        "--text-limit", str(args.text_limit), "--precision", args.precision,
    ]
    timeout = args.max_seconds * 3 + WORKER_TIMEOUT_MARGIN_S
    try:
        finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.error("%s did not finish within %g s", method, timeout)
        return {"method": method, "error": f"timed out after {timeout:g} s"}
    if finished.returncode != 0:
        logger.error("%s failed with status %d:\n%s", method, finished.returncode, finished.stderr[-3000:])
        lines = finished.stderr.strip().splitlines()
        return {"method": method, "error": lines[-1] if lines else f"exit status {finished.returncode}"}
    row = json.loads(finished.stdout.strip().splitlines()[-1])
    logger.info(
        "%s: %.1f samples/s at batch %d, peak RSS %.0f MB", method, row["samples_per_s"], row["batch_size"], row["peak_rss_mb"]
    )
    return row


def plot_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Draw samples/s and peak memory per method as bar charts."""
    measured = [row for row in rows if "samples_per_s" in row]
    names = [row["method"] for row in measured]
    speed = BarPanel(
        "training speed", "samples/s (pairs for clip)", names, {"samples/s": [row["samples_per_s"] for row in measured]}
    )
    memory_values: dict[str, list[float | None]] = {
        "peak RSS": [row["peak_rss_mb"] for row in measured],
        "RSS before steps": [row["rss_before_steps_mb"] for row in measured],
    }
    if any(row.get("cuda_peak_mb") for row in measured):
        memory_values["CUDA peak"] = [row.get("cuda_peak_mb") for row in measured]
    memory = BarPanel("memory", "MB", names, memory_values)
    return save_figure(path, [speed, memory])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 32, a warm-up and one timed step, 2000 texts")
    parser.add_argument("--methods", nargs="+", help="methods to run (default: every available one; --quick: simclr, mae and simcse)")
    parser.add_argument("--batch-size", type=int, help="samples per step (default: 256, --quick: 32)")
    parser.add_argument("--steps", type=int, help="maximum timed steps per method, after one warm-up step (default: 10, --quick: 1)")
    parser.add_argument("--max-seconds", type=float, help="maximum seconds of timed steps per method (default: 60, --quick: 10)")
    parser.add_argument("--text-limit", type=int, help="texts loaded for the text methods; 0 loads all (default: 0, --quick: 2000)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N")
    parser.add_argument("--image-data", type=Path, default=GLYPHS, help="glyphs .npz (falls back to digits upscaled to 32 px)")
    parser.add_argument("--text-data", type=Path, default=DESCRIPTIONS, help="Debian descriptions .jsonl.gz")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="training precision as in ssl-train (auto: bf16 on CUDA when supported, fp32 on CPU)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one method in this process
    args = parser.parse_args()

    defaults = {"batch_size": (256, 32), "steps": (10, 1), "max_seconds": (60.0, 10.0), "text_limit": (0, 2000)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.batch_size < 2:
        parser.error(f"--batch-size must be at least 2, got {args.batch_size}")
    if args.steps < 1 or args.max_seconds <= 0 or args.text_limit < 0:
        parser.error("--steps and --max-seconds must be positive and --text-limit not negative")
    return args


def main() -> None:
    args = parse_args()
    configure_logging(logging.WARNING if args.worker else logging.INFO)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    # The quick mode checks one method of each kind (contrastive, reconstruction, text) to stay under a minute.
    methods = args.methods or (QUICK_METHODS if args.quick else available_methods())
    rows = []
    for method in methods:
        if method in TEXT_METHODS and not args.text_data.is_file():
            logger.warning("skipping %s: %s does not exist", method, args.text_data)
            rows.append({"method": method, "skipped": f"no text data at {args.text_data}"})
            continue
        rows.append(run_method(method, args))

    command = " ".join(["python -m bench.bench_methods", *sys.argv[1:]])
    record = {
        "command": command,
        "unit": "training samples/s (image-caption pairs for clip), memory in MB",
        "settings": {
            "batch_size": args.batch_size, "steps": args.steps, "max_seconds": args.max_seconds,
            "text_limit": args.text_limit, "precision": args.precision,
        },
        "rows": rows,
    }
    path = write_result("methods-quick" if args.quick else "methods", record)
    plot = plot_rows(path.with_suffix(".png"), rows)
    print(json.dumps({"rows": rows, "record": str(path), "plot": str(plot)}, indent=2))
    failed = [row["method"] for row in rows if "error" in row]
    if failed:
        logger.error("methods that failed: %s", ", ".join(failed))
        raise SystemExit(1)


if __name__ == "__main__":
    main()
