"""Static checks of the Dockerfile and docker-compose.yml, which cannot be built here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SETTING_VARIABLES = {f"EMBED_{name.upper()}" for name in Settings.model_fields}


def dockerfile_instructions(keyword: str) -> list[str]:
    """Return the arguments of every ``keyword`` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.strip().startswith(keyword + " ")]


def test_dockerfile_copies_existing_files():
    for arguments in dockerfile_instructions("COPY"):
        parts = [part for part in arguments.split() if not part.startswith("--")]
        for source in parts[:-1]:
            if arguments.startswith("--from"):
                continue
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerfile_entrypoint_is_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoints = dockerfile_instructions("ENTRYPOINT")
    assert entrypoints
    for entrypoint in entrypoints:
        assert entrypoint.strip() == '["ssl-serve"]'
    assert "ssl-serve" in scripts


def test_dockerfile_environment_names_real_settings():
    names = set(re.findall(r"\b(EMBED_[A-Z_]+)=", DOCKERFILE))
    assert names
    assert names <= SETTING_VARIABLES, names - SETTING_VARIABLES


def test_dockerfile_runs_as_non_root_with_healthcheck():
    assert dockerfile_instructions("USER") == ["embed", "embed"]
    assert "/readyz" in " ".join(dockerfile_instructions("HEALTHCHECK"))
    stages = re.findall(r"^FROM \S+ AS (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert {"cpu", "cuda"} <= set(stages)
    assert stages[-1] == "cpu", "the default target (the last stage) should be the CPU image"


def test_dockerfile_installs_dependencies_before_source():
    lines = DOCKERFILE.splitlines()
    first_dependency_install = next(i for i, line in enumerate(lines) if "pip install" in line and "-c requirements.lock" in line)
    first_source_copy = next(i for i, line in enumerate(lines) if line.startswith("COPY training"))
    assert first_dependency_install < first_source_copy


def test_compose_api_service():
    api = COMPOSE["services"]["api"]
    assert api["ports"] == ["8000:8000"]
    assert "./models:/srv/models:ro" in api["volumes"]
    assert any(volume.startswith("bank-data:") for volume in api["volumes"])
    assert "/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["restart"] == "unless-stopped"
    assert "bank-data" in COMPOSE["volumes"]


def test_compose_gpu_profile_reserves_nvidia():
    gpu = COMPOSE["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert gpu["build"]["target"] == "cuda"


def test_compose_trainer_profile_writes_models():
    trainer = COMPOSE["services"]["trainer"]
    assert trainer["profiles"] == ["trainer"]
    assert trainer["entrypoint"] == ["ssl-train"]
    assert "./models:/models" in trainer["volumes"]


@pytest.mark.parametrize("service", ["api", "api-gpu"])
def test_compose_environment_names_real_settings(service):
    names = set(COMPOSE["services"][service]["environment"])
    assert names <= SETTING_VARIABLES, names - SETTING_VARIABLES
