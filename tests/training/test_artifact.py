import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from training.artifact import ArtifactError, export_artifact, load_artifact
from training.encoders.resnet import ResNet

ARCHITECTURE = {"name": "resnet", "kwargs": {"in_channels": 1, "depth": 10, "width": 4, "small_stem": True}}


def image_meta(name: str = "tiny") -> dict:
    return {
        "name": name,
        "modality": "image",
        "architecture": ARCHITECTURE,
        "embedding_dim": 32,
        "preprocessing": {"size": 8, "channels": 1, "mean": [0.3], "std": [0.4]},
        "normalize": True,
        "method": "simclr",
        "space": name,
    }


def trained_encoder() -> ResNet:
    torch.manual_seed(0)
    encoder = ResNet(**ARCHITECTURE["kwargs"])
    # One training-mode pass moves BatchNorm running statistics away from their defaults.
    encoder.train()
    encoder(torch.randn(16, 1, 8, 8))
    return encoder.eval()


def test_artifact_round_trip_same_process(tmp_path):
    encoder = trained_encoder()
    path = export_artifact(tmp_path / "tiny", encoder, image_meta())
    loaded = load_artifact(path)
    images = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.encoder(images), encoder(images))
    assert loaded.meta.embedding_dim == 32
    assert not loaded.encoder.training


def test_artifact_round_trip_fresh_process(tmp_path):
    encoder = trained_encoder()
    path = export_artifact(tmp_path / "tiny", encoder, image_meta())
    images = torch.randn(3, 1, 8, 8)
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        torch.save(encoder(images), tmp_path / "expected.pt")
    script = (
        "import sys, torch\n"
        "from training.artifact import load_artifact\n"
        "artifact = load_artifact(sys.argv[1], 'cpu')\n"
        "images = torch.load(sys.argv[2], weights_only=True)\n"
        "expected = torch.load(sys.argv[3], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    assert torch.equal(artifact.encoder(images), expected)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path), str(tmp_path / "images.pt"), str(tmp_path / "expected.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_export_writes_meta_and_weights_only(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    assert sorted(p.name for p in path.iterdir()) == ["model.json", "weights.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["format_version"] == 1
    assert meta["space"] == "tiny"


def test_export_replaces_existing_artifact(tmp_path):
    export_artifact(tmp_path / "tiny", ResNet(**ARCHITECTURE["kwargs"]), image_meta())
    encoder = trained_encoder()
    export_artifact(tmp_path / "tiny", encoder, image_meta())
    loaded = load_artifact(tmp_path / "tiny")
    assert torch.equal(loaded.encoder.stem[0].weight, encoder.stem[0].weight)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_export_unwraps_compiled_module_prefix(tmp_path):
    encoder = trained_encoder()
    wrapper = torch.nn.Module()
    wrapper._orig_mod = encoder
    path = export_artifact(tmp_path / "tiny", wrapper, image_meta())
    loaded = load_artifact(path)
    assert set(loaded.encoder.state_dict()) == set(encoder.state_dict())


def test_export_rejects_non_finite_weights(tmp_path):
    encoder = trained_encoder()
    with torch.no_grad():
        encoder.stem[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ArtifactError, match="non-finite"):
        export_artifact(tmp_path / "tiny", encoder, image_meta())
    assert not (tmp_path / "tiny").exists()


def test_export_rejects_invalid_meta(tmp_path):
    meta = image_meta()
    meta["preprocessing"]["std"] = [0.0]
    with pytest.raises(ArtifactError, match="std"):
        export_artifact(tmp_path / "tiny", trained_encoder(), meta)


def test_load_rejects_prefixed_keys(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    state = {"module." + key: value for key, value in trained_encoder().state_dict().items()}
    save_file(state, str(path / "weights.safetensors"))
    with pytest.raises(ArtifactError, match="does not match resnet"):
        load_artifact(path)


def test_load_names_missing_weights(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    (path / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors is missing"):
        load_artifact(path)


def test_load_names_corrupt_weights(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    (path / "weights.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_artifact(path)


def test_load_names_corrupt_meta(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    (path / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="model.json is not valid JSON"):
        load_artifact(path)


def test_load_rejects_unknown_format_version(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    meta = json.loads((path / "model.json").read_text())
    meta["format_version"] = 99
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_artifact(path)


def test_load_rejects_wrong_embedding_dim(tmp_path):
    path = export_artifact(tmp_path / "tiny", trained_encoder(), image_meta())
    meta = json.loads((path / "model.json").read_text())
    meta["embedding_dim"] = 64
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="embedding_dim 64"):
        load_artifact(path)


@pytest.mark.parametrize("name", ["../tokenizer.json", "/etc/passwd", "sub/tokenizer.json", ".."])
def test_text_meta_rejects_tokenizer_path(name):
    from training.artifact import TextPreprocessing

    with pytest.raises(ValueError, match="tokenizer must be a file name"):
        TextPreprocessing(tokenizer=name, max_tokens=16)
