"""ssl-serve's entry point: flags are parsed before torch loads."""

from __future__ import annotations

import subprocess
import sys


def test_entry_module_does_not_load_torch() -> None:
    # Loading torch takes seconds, so --help and flag errors return without it.
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, app.__main__; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert completed.stdout.strip() == "False"


def faiss_loader_level(level: str) -> str:
    """Return the effective level of FAISS's loader logger after the entry point configured ``level``, in a fresh process."""
    code = (
        "import logging, app.__main__ as entry; "
        f"entry.configure_logging({level!r}); "
        "print(logging.getLevelName(logging.getLogger('faiss.loader').getEffectiveLevel()))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return completed.stdout.strip()


def test_faiss_loader_lines_hidden_at_info() -> None:
    assert faiss_loader_level("INFO") == "WARNING"


def test_faiss_loader_lines_shown_at_debug() -> None:
    assert faiss_loader_level("DEBUG") == "DEBUG"


def test_uvicorn_runs_on_uvloop_and_httptools() -> None:
    """Both are dependencies. Without them uvicorn falls back to slower pure-Python parts and logs nothing."""
    from uvicorn.config import Config

    config = Config(app=lambda scope, receive, send: None, log_config=None)
    config.load()
    assert config.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    if sys.platform != "win32":
        assert config.get_loop_factory().__module__.startswith("uvloop")


def test_http_and_loop_flags_reach_uvicorn(monkeypatch, tmp_path) -> None:
    import uvicorn

    import app.__main__ as entry
    import app.main
    from app.http_protocol import BoundedHttpToolsProtocol

    calls = []
    monkeypatch.setattr(entry, "configure_logging", lambda level: None)
    monkeypatch.setattr(app.main, "create_app", lambda settings: "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append(options))
    entry.main(["--models-dir", str(tmp_path), "--http", "h11", "--loop", "asyncio"])
    entry.main(["--models-dir", str(tmp_path)])
    assert [(call["http"], call["loop"]) for call in calls] == [("h11", "asyncio"), (BoundedHttpToolsProtocol, "auto")]
