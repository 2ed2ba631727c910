"""Logging set-up shared by the benchmark scripts: INFO progress on stderr, chatty libraries quietened."""

from __future__ import annotations

import logging

# httpx logs every request at INFO, and the FAISS loader lists each SIMD variant it tries.
QUIET_LOGGERS = ("httpx", "httpcore", "faiss.loader")


def configure_logging(level: int = logging.INFO) -> None:
    """Send log records to stderr, so that stdout carries only a script's final JSON."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
