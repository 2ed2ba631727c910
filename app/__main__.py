"""Command-line entry point ``ssl-serve`` (also ``python -m app``).

Every Settings field is a flag (``--max-batch-size`` for ``max_batch_size``) that
overrides its ``EMBED_*`` variable, except ``api_key``, which is read only from
``EMBED_API_KEY`` so that it never appears in a process list.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.settings import ENV_PREFIX, Settings

logger = logging.getLogger("app")

ENV_ONLY_FIELDS = {"api_key"}


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with one flag per Settings field, each defaulting to None (not given)."""
    parser = argparse.ArgumentParser(
        prog="ssl-serve",
        description="Serve the model artifacts of a folder over HTTP: embeddings, similarity and anomaly banks.",
        epilog=f"Every flag can also be set with an environment variable, such as {ENV_PREFIX}PORT for --port; "
        f"the API key only with {ENV_PREFIX}API_KEY.",
    )
    for name, spec in Settings.model_fields.items():
        if name in ENV_ONLY_FIELDS:
            continue
        flag = "--" + name.replace("_", "-")
        help_text = f"{spec.description} (default: {spec.default}; env {ENV_PREFIX}{name.upper()})"
        if _is_bool(spec.annotation):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(spec.annotation) is typing.Literal:
            choices = typing.get_args(spec.annotation)
            convert = str.upper if all(choice.isupper() for choice in choices) else str
            parser.add_argument(flag, default=None, type=convert, choices=choices, help=help_text)
        else:
            parser.add_argument(flag, default=None, metavar=_metavar(spec.annotation), help=help_text)
    return parser


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or bool in typing.get_args(annotation)


def _metavar(annotation: Any) -> str:
    kinds = set(typing.get_args(annotation)) or {annotation}
    if int in kinds:
        return "N"
    if float in kinds:
        return "NUMBER"
    if Path in kinds:
        return "PATH"
    return "TEXT"


def parse_settings(argv: list[str] | None = None) -> Settings:
    """Parse flags, merge them over the ``EMBED_*`` variables and validate the result.

    Exits with status 2 and a readable message when a value is invalid.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        parser.error(f"invalid settings: {describe_settings_error(error)}")
        raise  # parser.error exits; this line only satisfies type checkers


def describe_settings_error(error: ValidationError) -> str:
    """Summarise a Settings validation error as ``field: message; ...``."""
    problems = []
    for item in error.errors():
        field = ".".join(map(str, item["loc"])) or "settings"
        context = item.get("ctx") or {}
        message = str(context["error"]) if item["type"] == "value_error" and "error" in context else item["msg"]
        problems.append(f"{field}: {message}")
    return "; ".join(problems)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # FAISS logs at INFO which of its builds it loaded, with lines such as "Could not
        # load library with AVX2 support" that read like errors but are expected
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> None:
    """Run the service until it is interrupted."""
    settings = parse_settings(argv)
    configure_logging(settings.log_level)
    # Importing the app loads torch, which takes seconds, so flags are checked before it.
    from app.http_protocol import http_protocol
    from app.main import create_app

    logger.info("serving %s on http://%s:%d", settings.models_dir, settings.host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http=http_protocol(settings.http),
        loop=settings.loop,
        log_level=settings.log_level.lower(),
        log_config=None,  # keep the logging set up above
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 1,
    )


if __name__ == "__main__":
    main()
