"""Damaged files at start-up: corrupt or truncated banks, and broken model artifacts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.helpers import export_image_model, export_text_model, live_server, make_settings
from tests.reliability.helpers import IMAGE_MODEL, error_of, vectors
from tests.reliability.server import start_server
from training.artifact import META_FILE, TOKENIZER_FILE, WEIGHTS_FILE


def data_file(folder: Path, prefix: str) -> Path:
    return next(path for path in folder.iterdir() if path.name.startswith(prefix))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# Each damage takes a bank folder and returns the file the error must name.
DAMAGES: dict[str, Callable[[Path], Path]] = {}


def damage(function: Callable[[Path], Path]) -> Callable[[Path], Path]:
    DAMAGES[function.__name__.replace("_", "-")] = function
    return function


@damage
def truncated_index(folder: Path) -> Path:
    path = data_file(folder, "index-")
    truncate(path)
    return path


@damage
def truncated_neighbors(folder: Path) -> Path:
    path = data_file(folder, "neighbors-")
    truncate(path)
    return path


@damage
def missing_index(folder: Path) -> Path:
    path = data_file(folder, "index-")
    path.unlink()
    return path


@damage
def garbage_meta(folder: Path) -> Path:
    path = folder / "meta.json"
    path.write_bytes(b"\x00\xffnot json")
    return path


@damage
def empty_meta(folder: Path) -> Path:
    path = folder / "meta.json"
    path.write_bytes(b"")
    return path


@damage
def meta_with_extra_id(folder: Path) -> Path:
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    meta["ids"].append("ghost")
    path.write_text(json.dumps(meta))
    return data_file(folder, "index-")  # the index no longer matches the ids


@damage
def flipped_bit(folder: Path) -> Path:
    """Flip one bit of the last stored vector: FAISS still reads the file, with a wrong value."""
    path = data_file(folder, "index-")
    data = bytearray(path.read_bytes())
    data[-(8 * 5 + 9)] ^= 0x10  # inside the vectors, before the trailing id map of 5 int64 ids
    path.write_bytes(bytes(data))
    return path


@damage
def swapped_index(folder: Path) -> Path:
    path = data_file(folder, "index-")
    path.write_bytes(data_file(folder.parent / "healthy", "index-").read_bytes())
    return path


@pytest.fixture(scope="module")
def damaged(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, dict[str, Path]]]:
    """Yield a client of a restarted service whose banks were damaged while it was down, and the damaged files."""
    settings = make_settings(models_dir_all, tmp_path_factory.mktemp("damaged-data"))
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        for seed, name in enumerate(["healthy", "legacy", *DAMAGES]):
            assert client.put(f"/v1/banks/{name}", json={"model": IMAGE_MODEL, "k": 2}).status_code == 201
            added = client.post(f"/v1/banks/{name}/samples", json={"input": vectors(5, 16, seed=seed)})
            assert added.status_code == 200

    banks = settings.data_dir / "banks"
    broken = {name: function(banks / name) for name, function in DAMAGES.items()}
    legacy = json.loads((banks / "legacy" / "meta.json").read_text())
    del legacy["index_sha256"], legacy["neighbors_sha256"]  # as saved before checksums existed
    (banks / "legacy" / "meta.json").write_text(json.dumps(legacy))
    with live_server(settings) as url, httpx.Client(base_url=url, timeout=10.0) as client:
        yield client, broken


def test_damaged_service_ready(damaged) -> None:
    client, _ = damaged
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("bank", list(DAMAGES))
def test_damaged_bank_listed_unavailable(damaged, bank: str) -> None:
    client, broken = damaged
    listing = {entry["name"]: entry for entry in client.get("/v1/banks").json()["data"]}
    assert listing[bank]["status"] == "unavailable"
    assert str(broken[bank]) in listing[bank]["error"]


@pytest.mark.parametrize("bank", list(DAMAGES))
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("GET", "", None), ("POST", "/score", {"input": vectors(1, 16)}), ("POST", "/samples", {"input": vectors(1, 16)})],
)
def test_damaged_bank_503(damaged, bank: str, method: str, suffix: str, body: dict | None) -> None:
    client, broken = damaged
    response = client.request(method, f"/v1/banks/{bank}{suffix}", json=body)
    assert response.status_code == 503
    assert error_of(response)["type"] == "bank_unavailable"
    assert str(broken[bank]) in error_of(response)["message"]
    assert "Restore its files or delete the bank" in error_of(response)["message"]


def test_healthy_bank_still_works(damaged) -> None:
    client, _ = damaged
    scored = client.post("/v1/banks/healthy/score", json={"input": vectors(2, 16, seed=3)})
    added = client.post("/v1/banks/healthy/samples", json={"input": vectors(2, 16, seed=4)})
    assert scored.status_code == 200
    assert added.status_code == 200
    assert added.json()["size"] == 7


def test_bank_without_checksums_loads(damaged) -> None:
    client, _ = damaged
    info = client.get("/v1/banks/legacy").json()
    scored = client.post("/v1/banks/legacy/score", json={"input": vectors(1, 16)})
    assert info["status"] == "ready"
    assert info["size"] == 5
    assert scored.status_code == 200


def test_damaged_bank_can_be_deleted(damaged) -> None:
    client, _ = damaged
    deleted = client.delete("/v1/banks/truncated-index")
    recreated = client.put("/v1/banks/truncated-index", json={"model": IMAGE_MODEL})
    assert deleted.status_code == 200
    assert recreated.status_code == 201


# --- model artifacts ----------------------------------------------------------------------


def truncated_weights(folder: Path) -> Path:
    truncate(folder / WEIGHTS_FILE)
    return folder / WEIGHTS_FILE


def weights_of_other_model(folder: Path) -> Path:
    """Replace the weights with those of a wider model: a valid file whose tensors do not fit."""
    other = export_image_model(folder.parent / ".other", "other", dim=32)
    (folder / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    return folder / WEIGHTS_FILE


def pickle_weights(folder: Path) -> Path:
    (folder / WEIGHTS_FILE).write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.")  # a pickle, not safetensors
    return folder / WEIGHTS_FILE


def truncated_tokenizer(folder: Path) -> Path:
    truncate(folder / TOKENIZER_FILE)
    return folder / TOKENIZER_FILE


def missing_tokenizer(folder: Path) -> Path:
    (folder / TOKENIZER_FILE).unlink()
    return folder / TOKENIZER_FILE


def truncated_meta(folder: Path) -> Path:
    truncate(folder / META_FILE)
    return folder / META_FILE


ARTIFACT_DAMAGES = [
    truncated_weights, weights_of_other_model, pickle_weights, truncated_tokenizer, missing_tokenizer, truncated_meta,
]  # fmt: skip


@pytest.mark.parametrize("damage_artifact", ARTIFACT_DAMAGES, ids=lambda function: function.__name__)
def test_broken_artifact_skipped(tmp_path: Path, damage_artifact, caplog: pytest.LogCaptureFixture) -> None:
    models_dir = tmp_path / "models"
    export_image_model(models_dir, IMAGE_MODEL)
    broken = export_text_model(models_dir, "broken")
    named = damage_artifact(broken)
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        with live_server(make_settings(models_dir, tmp_path / "var")) as url:
            ready = httpx.get(f"{url}/readyz", timeout=10.0)
            models = httpx.get(f"{url}/v1/models", timeout=10.0).json()["data"]
            embedded = httpx.post(f"{url}/v1/embeddings", json={"model": "broken", "input": ["a"]}, timeout=10.0)
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]

    assert ready.status_code == 200
    assert [model["id"] for model in models] == [IMAGE_MODEL]
    assert embedded.status_code == 404
    assert any(str(named) in message for message in errors)


@pytest.mark.slow
def test_broken_artifact_fails_start(tmp_path: Path) -> None:
    """With ``--on-model-error fail`` the process exits non-zero and its log names the broken file."""
    models_dir = tmp_path / "models"
    export_image_model(models_dir, IMAGE_MODEL)
    named = truncated_weights(export_image_model(models_dir, "broken", seed=1))
    with pytest.raises(RuntimeError, match="server exited with status 3") as caught:
        start_server(models_dir, tmp_path / "var", tmp_path / "server.log", "--on-model-error", "fail")
    assert f"{named} is not a readable safetensors file" in str(caught.value)
