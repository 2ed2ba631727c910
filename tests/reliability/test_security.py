"""Security properties: key comparison, file loading without code execution, paths, limits before work."""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import pickle
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from app import auth
from app.banks import BankConfig, FaissBankStore
from tests.app.helpers import export_image_model
from tests.reliability.conftest import Service
from tests.reliability.helpers import IMAGE_MODEL, RGB_MODEL, b64, error_of, png_bomb, vectors
from tests.reliability.server import ServerProcess, start_server
from training.artifact import WEIGHTS_FILE, ArtifactError, load_artifact
from training.checkpoint import load_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ["app", "training", "bench"]


def call_name(node: ast.Call) -> str:
    """Return a call's dotted name, such as ``torch.load``, ``eval`` or ``<expression>.eval`` for ``f().eval()``."""
    parts = []
    target = node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    parts.append(target.id if isinstance(target, ast.Name) else "<expression>")
    return ".".join(reversed(parts))


def keyword_value(node: ast.Call, name: str) -> object:
    """Return the constant passed as keyword ``name``, None when absent, Ellipsis when not a constant."""
    for keyword in node.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else ...
    return None


def unsafe_loads() -> list[str]:
    """Return every call in the shipped code that could run code from a file or a string."""
    forbidden = {"eval", "exec", "pickle.load", "pickle.loads", "joblib.load", "marshal.load", "marshal.loads",
                 "yaml.load", "yaml.unsafe_load", "dill.load", "cloudpickle.load"}  # fmt: skip
    found = []
    for folder in SOURCE_DIRS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                name = call_name(node)
                where = f"{path.relative_to(REPO_ROOT)}:{node.lineno} {name}"
                if name in forbidden:
                    found.append(where)
                elif name == "torch.load" and keyword_value(node, "weights_only") is not True:
                    found.append(f"{where} without weights_only=True")
                elif name in ("np.load", "numpy.load") and keyword_value(node, "allow_pickle") not in (None, False):
                    found.append(f"{where} with allow_pickle")  # the default is False from NumPy 1.16.3 on
    return found


def test_no_unsafe_loads_in_source() -> None:
    assert unsafe_loads() == []


def test_api_key_compared_in_constant_time() -> None:
    tree = ast.parse(inspect.getsource(auth.require_api_key))
    calls = {call_name(node) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    equalities = [
        ast.unparse(node)
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops)
    ]
    assert "hmac.compare_digest" in calls
    assert [text for text in equalities if "token" in text or "api_key" in text] == []


# --- files a user can write -------------------------------------------------------------------


class WritesMarker:
    """Unpickling this object creates a file; the test then checks that the file never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickled_bank_file_not_executed(tmp_path: Path) -> None:
    """A neighbour file holding a pickle, with its checksum updated to match, is rejected unread."""
    marker = tmp_path / "executed"
    store = FaissBankStore(tmp_path / "var")
    store.load()
    store.create("victim", BankConfig(model="m", dim=4, k=2))
    store.add("victim", np.eye(4))
    store.close()

    folder = tmp_path / "var" / "banks" / "victim"
    neighbors = next(folder.glob("neighbors-*"))
    with open(neighbors, "wb") as handle:
        np.savez(handle, distances=np.array([WritesMarker(marker)], dtype=object), ids=np.zeros((4, 2), dtype=np.int64))
    meta = json.loads((folder / "meta.json").read_text())
    meta["neighbors_sha256"] = hashlib.sha256(neighbors.read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))

    reopened = FaissBankStore(tmp_path / "var")
    reopened.load()
    info = reopened.list_banks()[0]
    reopened.close()
    assert info.status == "unavailable"
    assert "Object arrays cannot be loaded when allow_pickle=False" in info.error
    assert not marker.exists()


def test_pickled_checkpoint_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": WritesMarker(marker)}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(path)
    assert not marker.exists()


def test_pickled_artifact_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    folder = export_image_model(tmp_path / "models", "victim")
    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps({"weight": WritesMarker(marker)}))
    with pytest.raises(ArtifactError, match="is not a readable safetensors file"):
        load_artifact(folder)
    assert not marker.exists()


# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".hidden", "-dash", "..x", "x..", "a.b", "_", "CON", "a" * 64])
def test_valid_odd_bank_names_stay_inside(service: Service, name: str) -> None:
    banks = service.data_dir / "banks"
    outside_before = sorted(path for path in service.data_dir.parent.rglob("*") if banks not in path.parents and path != banks)
    response = service.client.put(f"/v1/banks/{name}", json={"model": IMAGE_MODEL})
    outside_after = sorted(path for path in service.data_dir.parent.rglob("*") if banks not in path.parents and path != banks)
    deleted = service.client.delete(f"/v1/banks/{name}")
    assert response.status_code == 201
    assert (banks / name).parent == banks
    assert outside_after == outside_before
    assert deleted.status_code == 200
    assert not (banks / name).exists()


# --- limits before work -------------------------------------------------------------------


def huge_png(width: int, height: int) -> bytes:
    """Return a valid black RGB PNG of ``width`` x ``height``; the zeros compress to a small file."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte, then RGB samples
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def peak_rss_bytes(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("VmHWM missing from /proc status")


@pytest.fixture(scope="module")
def child(models_dir_all: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Yield an ssl-serve process that accepts at most one million pixels per image."""
    folder = tmp_path_factory.mktemp("security-child")
    server = start_server(models_dir_all, folder / "var", folder / "server.log", "--max-image-pixels", "1000000")
    yield server
    server.stop()


@pytest.mark.slow
def test_pixel_limit_before_decoding(child: ServerProcess) -> None:
    """An 8000 x 8000 RGB PNG (192 MB of pixels, 200 KB of file) is refused from its header."""
    image = b64(huge_png(8000, 8000))
    before = peak_rss_bytes(child)
    response = httpx.post(f"{child.url}/v1/embeddings", json={"model": RGB_MODEL, "input": [{"image": image}]}, timeout=30.0)
    growth = peak_rss_bytes(child) - before
    assert response.status_code == 413
    assert error_of(response)["message"] == "input[0]: image is 8000x8000 = 64000000 pixels, above the limit of 1000000 pixels"
    assert growth < 50 * 2**20


@pytest.mark.slow
def test_item_count_before_decoding(child: ServerProcess) -> None:
    """257 decompression bombs are refused by their count, before any is opened."""
    items = [{"image": b64(png_bomb())}] * 257
    response = httpx.post(f"{child.url}/v1/embeddings", json={"model": RGB_MODEL, "input": items}, timeout=30.0)
    assert response.status_code == 413
    assert error_of(response)["message"] == "input has 257 items; this service accepts at most 256 per request"


@pytest.mark.slow
def test_text_length_before_tokenizing(child: ServerProcess) -> None:
    long_text = "word " * 5000  # 25,000 characters, above the default 20,000
    response = httpx.post(f"{child.url}/v1/embeddings", json={"model": "tiny-text", "input": ["ok", long_text]}, timeout=30.0)
    assert response.status_code == 413
    assert error_of(response)["message"] == "input[1]: text has 25000 characters; this service accepts at most 20000"


@pytest.mark.slow
def test_vectors_never_reach_disk_unchecked(child: ServerProcess) -> None:
    with httpx.Client(base_url=child.url, timeout=30.0) as client:
        assert client.put("/v1/banks/checked", json={"model": IMAGE_MODEL}).status_code == 201
        response = client.post("/v1/banks/checked/samples", json={"input": [*vectors(2, 16), {"embedding": [1.0] * 15}]})
        size = client.get("/v1/banks/checked").json()["size"]
    assert response.status_code == 400
    assert size == 0
