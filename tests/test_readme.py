"""The README names only routes, settings and flags that exist, and documents every setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from training.cli import _train_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


@pytest.fixture(scope="module")
def openapi_paths(tmp_path_factory) -> set[str]:
    models = tmp_path_factory.mktemp("models")
    app = create_app(Settings(models_dir=models, data_dir=models.parent / "var"))
    return set(app.openapi()["paths"]) | {"/openapi.json", "/docs"}


def route_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[A-Za-z0-9_.-]+", re.escape(path)) + "$")


def readme_paths() -> set[str]:
    found = set(re.findall(r"(?:127\.0\.0\.1:\d+|`)(/(?:v1|healthz|readyz|metrics)[A-Za-z0-9_./{}-]*)", README))
    return {path.rstrip(".") for path in found if path.rstrip("/") != "/v1"}


def test_readme_routes_exist(openapi_paths):
    patterns = [route_pattern(path) for path in openapi_paths]
    for path in readme_paths():
        assert any(pattern.match(path) for pattern in patterns), f"README names unknown route {path}"


def test_every_route_is_in_readme(openapi_paths):
    documented = readme_paths()
    for path in openapi_paths - {"/openapi.json", "/docs"}:
        pattern = route_pattern(path)
        assert any(pattern.match(name) for name in documented), f"route {path} is not in the README"


def test_readme_variables_are_settings():
    names = set(re.findall(r"\bEMBED_[A-Z_]+[A-Z]\b", README))
    known = {f"EMBED_{name.upper()}" for name in Settings.model_fields}
    assert names <= known, names - known


def test_every_setting_is_in_readme_table():
    for name in Settings.model_fields:
        assert f"| `{name}` | `EMBED_{name.upper()}` |" in README, f"setting {name} is missing from the table"


def test_readme_train_flags_exist():
    flags = set(re.findall(r"ssl-train[^\n]*", README))
    parser_flags = {option for action in _train_parser()._actions for option in action.option_strings}
    for line in flags:
        for flag in re.findall(r"(--[a-z][a-z-]+)", line):
            assert flag in parser_flags, f"README uses unknown ssl-train flag {flag}"


def test_readme_opens_with_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == ["make serve", "make test"]
