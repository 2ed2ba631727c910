"""Serving throughput and latency of ``ssl-serve`` against the raw forward pass of the same model.

For the default image model (and with ``--text`` the default text model), one run measures
side by side:

- ``raw``: the encoder loaded in this process with ``training.artifact.load_artifact``,
  fed preprocessed tensors: a batch-1 forward (latency) and the forward at several batch
  sizes, of which the best throughput is the limit of this machine for that model. At
  that batch size it also times the in-process pipeline: decoding or tokenizing the same
  payloads, then the forward, as a caller embedding in its own process would.
- ``batched``: a real ``ssl-serve`` subprocess on 127.0.0.1 with its default settings
  (dynamic batching on), loaded by a closed-loop client at concurrency 1, 8, 32 and 128:
  one kept-alive HTTP/1.1 connection per worker (``bench.http1``), or a shared httpx
  pool with ``--client httpx``. Each request embeds one item (``--items-per-request``).
- ``unbatched``: the same server with ``EMBED_MAX_BATCH_SIZE=1``.
- each ``--variant``: the batched server with some settings changed.

Each concurrency level is bounded in requests and seconds and follows a short warm-up.
The load generator runs on the same cores as the server, so its CPU share
(``client_cpu_cores``) is reported beside the server's (``server_cpu_cores``).
The targets: at concurrency 32, at least 0.8x the raw forward and 3x the unbatched
server. At concurrency 1, a median latency within 5 ms of the raw batch-1 forward.

    python -m bench.bench_serving                 # full: image model, 4 levels x (5000 requests or 15 s)
    python -m bench.bench_serving --text          # also the default text model
    python -m bench.bench_serving --quick         # image model, 4 levels x (150 requests or 1 s)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from app.main import inference_streams
from app.preprocess import decode_image_item
from app.registry import DTYPES
from app.settings import Settings
from bench.artifacts import DEFAULT_MODELS_DIR, REPO_ROOT, ArtifactInfo, pick_artifact, single_model_dir
from bench.common import write_result
from bench.load import CLIENTS, LevelStats, run_level
from bench.logs import configure_logging
from bench.plot import LinePanel, Reference, Series, save_figure
from bench.server import ServerProcess, running_server
from training.artifact import Artifact, load_artifact
from training.tokenizer import encode_texts, pad_sequences

logger = logging.getLogger("bench.serving")

TEXT_DATA = REPO_ROOT.parent / "shared" / "data" / "debian-descriptions" / "train.jsonl.gz"
FALLBACK_TEXTS = (
    "a small grey cat sleeps on the warm mat",
    "command-line tool to convert images between formats",
    "library for parsing and writing configuration files",
    "fonts for the Latin, Greek and Cyrillic scripts",
)
PAYLOAD_COUNT = 256
# Untimed forward calls per batch size: the first calls at a new input shape can be far
# slower than later ones (allocations, kernel selection).
WARMUP_CALLS = 3
SEED = 0
TARGET_RAW_RATIO = 0.8
TARGET_UNBATCHED_RATIO = 3.0
TARGET_P50_MARGIN_MS = 5.0
TARGET_CONCURRENCY = 32


# --- payloads ----------------------------------------------------------------------------


def image_payloads(artifact: Artifact, count: int) -> list[str]:
    """Return ``count`` seeded random PNG images at the model's input size and channels, base64-encoded."""
    prep = artifact.meta.image_preprocessing()
    rng = np.random.default_rng(SEED)
    payloads = []
    for _ in range(count):
        shape = (prep.size, prep.size) if prep.channels == 1 else (prep.size, prep.size, 3)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(buffer, "PNG")
        payloads.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return payloads


def text_payloads(count: int) -> list[str]:
    """Return ``count`` package descriptions (short + long) from the Debian data, or built-in sentences without it."""
    if not TEXT_DATA.is_file():
        logger.warning("%s not found; sending %d built-in sentences", TEXT_DATA, len(FALLBACK_TEXTS))
        return [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(count)]
    texts = []
    with gzip.open(TEXT_DATA, "rt", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            texts.append(f"{record['short']}\n{record['long']}".strip())
            if len(texts) == count:
                break
    return texts


def request_bodies(model: str, payloads: list[str], items_per_request: int, modality: str) -> list[bytes]:
    """Encode POST /v1/embeddings bodies once, cycling through ``payloads``."""
    bodies = []
    for start in range(0, len(payloads), items_per_request):
        chunk = [payloads[(start + offset) % len(payloads)] for offset in range(items_per_request)]
        items = [{"image": value} for value in chunk] if modality == "image" else chunk
        bodies.append(json.dumps({"model": model, "input": items}).encode())
    return bodies


def model_inputs(artifact: Artifact, payloads: list[str], max_pixels: int) -> list[Any]:
    """Preprocess ``payloads`` as the service does: image tensors (C, H, W) or token ids (L,)."""
    if artifact.meta.modality == "image":
        prep = artifact.meta.image_preprocessing()
        return [decode_image_item(payload, prep, max_pixels) for payload in payloads]
    prep = artifact.meta.text_preprocessing()
    sequences, _ = encode_texts(artifact.tokenizer, payloads, prep.max_tokens, prep.lowercase)
    return sequences


# --- raw forward -------------------------------------------------------------------------


def forward_function(artifact: Artifact, inputs: list[Any], batch_size: int, device: torch.device) -> Callable[[], None]:
    """Return a call that runs the encoder on one batch of ``batch_size`` inputs and copies the output to the CPU."""
    chosen = [inputs[i % len(inputs)] for i in range(batch_size)]
    encoder = artifact.encoder.to(device).eval()
    if artifact.meta.modality == "image":
        images = torch.stack(chosen).to(next(encoder.parameters()).dtype)  # (B, C, H, W), in the encoder's dtype

        def run() -> None:
            with torch.inference_mode():
                encoder(images.to(device)).float().cpu()

        return run
    input_ids, attention_mask = pad_sequences(chosen)  # (B, L), (B, L)

    def run_text() -> None:
        with torch.inference_mode():
            encoder(input_ids.to(device), attention_mask.to(device)).float().cpu()

    return run_text


def pipeline_function(artifact: Artifact, payloads: list[str], batch_size: int, device: torch.device) -> Callable[[], None]:
    """Return a call that preprocesses ``batch_size`` payloads as the service does and runs the encoder on them.

    This is what embedding the same items in the caller's own process costs: PNG decoding
    or tokenizing, then the forward pass.
    """
    chosen = [payloads[i % len(payloads)] for i in range(batch_size)]
    max_pixels = Settings.model_fields["max_image_pixels"].default

    def run() -> None:
        forward_function(artifact, model_inputs(artifact, chosen, max_pixels), batch_size, device)()

    return run


def time_calls(function: Callable[[], None], max_calls: int, max_seconds: float, min_calls: int = 3) -> list[float]:
    """Return seconds per call of ``function`` after ``WARMUP_CALLS`` untimed calls.

    Calls stop after ``max_calls`` or, once ``min_calls`` are done, after ``max_seconds``.
    """
    for _ in range(WARMUP_CALLS):
        function()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() < deadline):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def concurrent_calls_per_s(function: Callable[[], None], streams: int, threads: int, max_seconds: float) -> float:
    """Return calls per second of ``function`` run by ``streams`` threads at once, each with ``threads`` intra-op threads."""
    calls = [0] * streams
    warmed_up = threading.Barrier(streams + 1)

    def loop(stream: int) -> None:
        torch.set_num_threads(threads)  # per thread, as each of the server's inference threads sets it
        for _ in range(WARMUP_CALLS):
            function()
        warmed_up.wait()
        deadline = time.perf_counter() + max_seconds
        while time.perf_counter() < deadline:
            function()
            calls[stream] += 1

    workers = [threading.Thread(target=loop, args=(stream,)) for stream in range(streams)]
    for worker in workers:
        worker.start()
    warmed_up.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return sum(calls) / (time.perf_counter() - started)


def measure_raw(
    artifact: Artifact,
    payloads: list[str],
    inputs: list[Any],
    batch_sizes: list[int],
    max_seconds: float,
    device: torch.device,
    streams: int,
) -> dict[str, Any]:
    """Return the batch-1 latency and the throughput at each batch size of the raw forward pass.

    Each batch size is timed as one forward at a time on every CPU and, with ``streams``
    above one, as that many forwards at once with an equal share of the CPUs each, as the
    server runs them. The best of all is the limit of this machine. At that batch size and
    layout it also times the in-process pipeline (preprocessing of ``payloads``, then the
    forward).
    """
    cpus = torch.get_num_threads()
    share = max(1, cpus // streams)
    single = time_calls(forward_function(artifact, inputs, 1, device), 2000, max_seconds)
    rows = []
    for batch_size in batch_sizes:
        forward = forward_function(artifact, inputs, batch_size, device)
        times = time_calls(forward, 1000, max_seconds)
        row = {"batch_size": batch_size, "calls": len(times), "embeddings_per_s": round(batch_size * len(times) / sum(times), 1)}
        if streams > 1:
            row["streams_embeddings_per_s"] = round(batch_size * concurrent_calls_per_s(forward, streams, share, max_seconds), 1)
        rows.append(row)
        logger.info(
            "raw forward, batch %d: %.0f embeddings/s, %s with %d streams",
            batch_size, row["embeddings_per_s"], row.get("streams_embeddings_per_s", "-"), streams,
        )
    layouts = [(row["embeddings_per_s"], row["batch_size"], 1) for row in rows]
    layouts += [(row["streams_embeddings_per_s"], row["batch_size"], streams) for row in rows if "streams_embeddings_per_s" in row]
    best_per_s, best_batch, best_streams = max(layouts)
    pipeline = pipeline_function(artifact, payloads, best_batch, device)
    if best_streams == 1:
        times = time_calls(pipeline, 1000, max_seconds)
        pipeline_per_s = round(best_batch * len(times) / sum(times), 1)
    else:
        pipeline_per_s = round(best_batch * concurrent_calls_per_s(pipeline, best_streams, share, max_seconds), 1)
    logger.info("in-process preprocessing and forward, batch %d, %d streams: %.0f embeddings/s", best_batch, best_streams, pipeline_per_s)
    return {
        "device": str(device),
        "torch_threads": cpus,
        "streams": streams,
        "batch1_ms": {
            "p50": round(statistics.median(single) * 1000, 3),
            "p95": round(float(np.percentile(single, 95)) * 1000, 3),
            "calls": len(single),
        },
        "by_batch_size": rows,
        "best_batch_size": best_batch,
        "best_streams": best_streams,
        "best_embeddings_per_s": best_per_s,
        "pipeline_embeddings_per_s": pipeline_per_s,
    }


# --- server ------------------------------------------------------------------------------


def read_batch_metrics(server: ServerProcess, model: str) -> tuple[float, float]:
    """Return the sum and count of the server's ``embed_batch_size`` histogram for ``model``."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10.0, trust_env=False).text
    values = {}
    for name in ("sum", "count"):
        match = re.search(rf'^embed_batch_size_{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else float("nan")
    return values["sum"], values["count"]


def response_checker(count: int, dim: int) -> Callable[[dict[str, Any]], None]:
    def check(body: dict[str, Any]) -> None:
        data = body.get("data", [])
        if len(data) != count or len(data[0]["embedding"]) != dim:
            raise RuntimeError(f"expected {count} embeddings of width {dim}, got {len(data)} rows: {str(body)[:200]}")

    return check


def measure_server(
    label: str,
    model: str,
    dim: int,
    models_dir: Path,
    work_dir: Path,
    settings: dict[str, str],
    bodies: list[bytes],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Start ``ssl-serve`` with ``settings`` and load it at every concurrency level; return one row per level."""
    check = response_checker(args.items_per_request, dim)
    rows = []
    with running_server(models_dir, work_dir / f"var-{label}", work_dir / f"serve-{label}.log", settings) as server:
        for concurrency in args.concurrency:
            asyncio.run(
                run_level(
                    server.base_url, "/v1/embeddings", bodies, args.items_per_request, concurrency,
                    max_requests=max(2 * concurrency, 20), max_seconds=args.warmup_seconds, client=args.client,
                )
            )
            batch_sum, batch_count = read_batch_metrics(server, model)
            server_cpu = server.cpu_seconds()
            stats: LevelStats = asyncio.run(
                run_level(
                    server.base_url, "/v1/embeddings", bodies, args.items_per_request, concurrency,
                    max_requests=args.requests, max_seconds=args.seconds, check_response=check, client=args.client,
                )
            )
            server_cpu = server.cpu_seconds() - server_cpu
            batch_sum_after, batch_count_after = read_batch_metrics(server, model)
            batches = batch_count_after - batch_count
            stats.extra = {
                "server_cpu_cores": round(server_cpu / stats.elapsed_s, 3),
                "mean_batch_size": round((batch_sum_after - batch_sum) / batches, 2) if batches > 0 else None,
            }
            row = stats.summary()
            logger.info(
                "%s %s, concurrency %d: %.0f embeddings/s, p50 %.2f ms, p99 %.2f ms, batch %.1f, errors %s",
                model, label, concurrency, row["embeddings_per_s"] or 0, row["latency_ms"]["p50"] or 0,
                row["latency_ms"]["p99"] or 0, row["mean_batch_size"] or 0, row["errors"],
            )
            rows.append(row)
    return rows


# --- targets and plot --------------------------------------------------------------------


def level(rows: list[dict[str, Any]], concurrency: int) -> dict[str, Any] | None:
    return next((row for row in rows if row["concurrency"] == concurrency), None)


def evaluate_targets(raw: dict[str, Any], batched: list[dict[str, Any]], unbatched: list[dict[str, Any]]) -> dict[str, Any]:
    """Return each target's measured value and whether it is met (None where a level was not run)."""
    at_target = level(batched, TARGET_CONCURRENCY)
    unbatched_at_target = level(unbatched, TARGET_CONCURRENCY)
    single = level(batched, 1)
    targets: dict[str, Any] = {}
    if at_target and at_target["embeddings_per_s"]:
        ratio = at_target["embeddings_per_s"] / raw["best_embeddings_per_s"]
        targets["c32_vs_raw_forward"] = {"value": round(ratio, 3), "target": f">= {TARGET_RAW_RATIO}", "met": ratio >= TARGET_RAW_RATIO}
        ratio = at_target["embeddings_per_s"] / raw["pipeline_embeddings_per_s"]
        targets["c32_vs_in_process_pipeline"] = {"value": round(ratio, 3), "target": "none (for reading only)", "met": None}
        if unbatched_at_target and unbatched_at_target["embeddings_per_s"]:
            ratio = at_target["embeddings_per_s"] / unbatched_at_target["embeddings_per_s"]
            targets["c32_vs_unbatched"] = {"value": round(ratio, 3), "target": f">= {TARGET_UNBATCHED_RATIO}", "met": ratio >= TARGET_UNBATCHED_RATIO}
    if single and single["latency_ms"]["p50"] is not None:
        margin = single["latency_ms"]["p50"] - raw["batch1_ms"]["p50"]
        targets["c1_p50_minus_raw_batch1_ms"] = {
            "value": round(margin, 3), "target": f"<= {TARGET_P50_MARGIN_MS}", "met": margin <= TARGET_P50_MARGIN_MS
        }
    return targets


def plot_model(path: Path, name: str, raw: dict[str, Any], batched: list[dict[str, Any]], unbatched: list[dict[str, Any]]) -> Path:
    """Draw throughput against concurrency and latency percentiles against concurrency."""

    def points(rows: list[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]) -> list[tuple[float, float]]:
        return [(row["concurrency"], value(row)) for row in rows if value(row) is not None]

    best = raw["best_embeddings_per_s"]
    levels = sorted({row["concurrency"] for row in batched + unbatched})
    throughput = LinePanel(
        title=f"{name}: throughput",
        x_label="concurrent requests",
        y_label="embeddings/s",
        series=[
            Series("batched server", points(batched, lambda row: row["embeddings_per_s"])),
            Series("unbatched server", points(unbatched, lambda row: row["embeddings_per_s"]), dashed=True),
        ],
        log_x=True,
        log_y=True,
        x_ticks=levels,
        references=[
            Reference(best, f"raw forward, batch {raw['best_batch_size']} x {raw['best_streams']} at once"),
            Reference(raw["pipeline_embeddings_per_s"], "in-process preprocessing and forward"),
            Reference(TARGET_RAW_RATIO * best, f"target {TARGET_RAW_RATIO}x raw"),
        ],
    )
    latency = LinePanel(
        title=f"{name}: latency",
        x_label="concurrent requests",
        y_label="latency (ms)",
        series=[Series(f"batched {q}", points(batched, lambda row, q=q: row["latency_ms"][q])) for q in ("p50", "p95", "p99")]
        + [Series("unbatched p50", points(unbatched, lambda row: row["latency_ms"]["p50"]), dashed=True)],
        log_x=True,
        log_y=True,
        x_ticks=levels,
        references=[Reference(raw["batch1_ms"]["p50"], "raw batch-1 forward")],
    )
    return save_figure(path, [throughput, latency])


# --- one model ---------------------------------------------------------------------------


def bench_model(info: ArtifactInfo, args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Measure the raw forward and the batched and unbatched servers for one model."""
    logger.info("model %s (%s) from %s", info.name, info.modality, info.path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # what the server's device=auto picks
    artifact = load_artifact(info.path, device=device)
    artifact.encoder.to(DTYPES[args.dtype])
    payloads = image_payloads(artifact, PAYLOAD_COUNT) if info.modality == "image" else text_payloads(PAYLOAD_COUNT)
    bodies = request_bodies(info.name, payloads, args.items_per_request, info.modality)
    inputs = model_inputs(artifact, payloads, Settings.model_fields["max_image_pixels"].default)

    streams = args.raw_streams or inference_streams(Settings.model_construct(), device)  # defaults, as the bench server gets
    raw = measure_raw(artifact, payloads, inputs, args.batch_sizes, args.raw_seconds, device, streams)
    dim = artifact.meta.embedding_dim
    del artifact, inputs  # the servers below are separate processes
    models_dir = single_model_dir(info, work_dir)
    common = {"EMBED_CACHE_SIZE": "0", "EMBED_DTYPE": args.dtype}
    batched = measure_server("batched", info.name, dim, models_dir, work_dir, common, bodies, args)
    unbatched_settings = {**common, "EMBED_MAX_BATCH_SIZE": "1"}
    unbatched = measure_server("unbatched", info.name, dim, models_dir, work_dir, unbatched_settings, bodies, args)
    variants = {
        label: measure_server(label, info.name, dim, models_dir, work_dir, {**common, **settings}, bodies, args)
        for label, settings in args.variant
    }
    return {
        "model": info.name,
        "modality": info.modality,
        "items_per_request": args.items_per_request,
        "dtype": args.dtype,
        "payload": "seeded random PNG at the model's input size" if info.modality == "image" else "Debian package descriptions",
        "raw": raw,
        "batched": batched,
        "unbatched": unbatched,
        "variants": variants,
        "targets": evaluate_targets(raw, batched, unbatched),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few requests per level and few batch sizes, under a minute")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="folder of model artifacts (default: the repository's models/)")
    parser.add_argument("--model", help="image model to load (default: the first image model by name)")
    parser.add_argument("--text", action="store_true", help="also measure the text model")
    parser.add_argument("--text-model", help="text model to load with --text (default: the first text model by name)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 128], help="concurrent requests per level")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="load generator client: raw (one kept-alive HTTP/1.1 connection per worker, light) or httpx (one shared pool)",
    )
    parser.add_argument("--items-per-request", type=int, default=1, help="items in each request body")
    parser.add_argument("--requests", type=int, help="maximum requests per level (default: 5000, --quick: 150)")
    parser.add_argument("--seconds", type=float, help="maximum seconds per level (default: 15, --quick: 1)")
    parser.add_argument("--warmup-seconds", type=float, help="maximum seconds of warm-up before each level (default: 2, --quick: 0.3)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes of the raw forward (default: 1 to 512 in powers of 2)")
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        metavar="LABEL:SETTING=VALUE[,SETTING=VALUE]",
        help="also measure the batched server with these settings or environment variables changed, "
        "such as one-thread:large_batch_items=0 or spin:OMP_WAIT_POLICY=ACTIVE",
    )
    parser.add_argument(
        "--raw-streams",
        type=int,
        default=0,
        help="concurrent forward passes the raw forward is also timed with (default: the server's default for this device)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="weights and inputs of the raw forward and every server (EMBED_DTYPE); half types need CUDA",
    )
    parser.add_argument("--raw-seconds", type=float, help="maximum seconds per raw batch size (default: 3, --quick: 0.4)")
    args = parser.parse_args()

    defaults = {"requests": (5000, 150), "seconds": (15.0, 1.0), "warmup_seconds": (2.0, 0.3), "raw_seconds": (3.0, 0.4)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.batch_sizes is None:
        args.batch_sizes = [1, 8, 32, 128] if args.quick else [2**i for i in range(10)]
    for name in ("requests", "seconds", "warmup_seconds", "raw_seconds", "items_per_request"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.dtype != "float32" and not torch.cuda.is_available():
        parser.error(f"--dtype {args.dtype} needs CUDA: the service serves half precision only on a GPU")
    if args.raw_streams < 0:
        parser.error(f"--raw-streams must not be negative, got {args.raw_streams}")
    if min(args.concurrency) < 1 or min(args.batch_sizes) < 1:
        parser.error("--concurrency and --batch-sizes values must be at least 1")
    return args


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """Parse ``LABEL:SETTING=VALUE[,SETTING=VALUE]`` into a label and the server's environment.

    A SETTING is a service setting (``max_batch_size``, passed as ``EMBED_MAX_BATCH_SIZE``)
    or an upper-case environment variable passed as it is, such as ``OMP_WAIT_POLICY``.
    """
    label, _, assignments = text.partition(":")
    if not label or not assignments:
        raise argparse.ArgumentTypeError(f"expected LABEL:SETTING=VALUE, got {text!r}")
    settings = {}
    for assignment in assignments.split(","):
        name, separator, value = assignment.partition("=")
        if separator and name in Settings.model_fields:
            settings[f"EMBED_{name.upper()}"] = value
        elif separator and name.isupper() and not name.startswith("EMBED_"):
            settings[name] = value
        else:
            raise argparse.ArgumentTypeError(
                f"expected SETTING=VALUE with a service setting or an upper-case environment variable, got {assignment!r}"
            )
    return label, settings


def main() -> None:
    args = parse_args()
    configure_logging()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the server does with torch_threads=0

    selected = [("image", pick_artifact(args.models_dir, "image", args.model))]
    if args.text:
        selected.append(("text", pick_artifact(args.models_dir, "text", args.text_model)))

    results: dict[str, Any] = {}
    plots = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as temporary:
        for modality, info in selected:
            if info is None:
                logger.warning("no %s model in %s; skipping it", modality, args.models_dir)
                results[modality] = {"skipped": f"no {modality} model in {args.models_dir}"}
                continue
            results[modality] = bench_model(info, args, Path(temporary))

    command = " ".join(["python -m bench.bench_serving", *sys.argv[1:]])
    record = {
        "command": command,
        "cores_note": (
            f"the load generator and the server share this machine's {len(os.sched_getaffinity(0))} cores; "
            "client_cpu_cores is the generator's share, server_cpu_cores the server's"
        ),
        "server_defaults": {
            name: Settings.model_fields[name].default
            for name in ("max_batch_size", "max_wait_ms", "max_queue_items", "torch_threads", "large_batch_threads", "large_batch_items")
        },
        "levels": {"concurrency": args.concurrency, "max_requests": args.requests, "max_seconds": args.seconds},
        "client": args.client,
        "results": results,
    }
    path = write_result("serving-quick" if args.quick else "serving", record)
    for modality, result in results.items():
        if "raw" in result:
            plot_path = path.with_name(f"{path.stem}-{modality}.png")
            plots.append(str(plot_model(plot_path, result["model"], result["raw"], result["batched"], result["unbatched"])))
    summary = {modality: result.get("targets", result) for modality, result in results.items()}
    print(json.dumps({"targets": summary, "record": str(path), "plots": plots}, indent=2))


if __name__ == "__main__":
    main()
