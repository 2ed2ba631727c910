"""Tests of image-caption pair loading."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import TrainConfig
from training.data_pairs import PairDataset, load_pair_dataset


def pair_config(data, **overrides) -> TrainConfig:
    return TrainConfig(method="clip", data=str(data), out="out", **overrides)


def write_images(folder, names: list[str], size: int = 12) -> None:
    for index, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size + 4), (index * 40, 10, 200)).save(path)


def test_captions_jsonl_folder(tmp_path):
    write_images(tmp_path, ["cats/a.png", "dogs/b.png", "unlisted.png"])
    lines = [
        {"file": "cats/a.png", "caption": "a cat", "label": "cat"},
        {"file": "dogs/b.png", "caption": "a dog", "label": "dog"},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    pairs = load_pair_dataset(pair_config(tmp_path))
    assert len(pairs) == 2
    assert pairs.captions == ["a cat", "a dog"]
    assert pairs.labels.tolist() == [0, 1]
    assert pairs.images.images.shape == (2, 3, 12, 12)


def test_captions_txt_folder(tmp_path):
    write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "captions.txt").write_text("# file\tcaption\na.png\tfirst one\n\nb.png\tsecond\twith tab\n", encoding="utf-8")
    pairs = load_pair_dataset(pair_config(tmp_path, image_size=8, channels=1))
    assert pairs.captions == ["first one", "second\twith tab"]
    assert pairs.labels.tolist() == [-1, -1]
    assert pairs.images.images.shape == (2, 1, 8, 8)


def test_captions_txt_needs_tab(tmp_path):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "captions.txt").write_text("a.png first\n", encoding="utf-8")
    with pytest.raises(ValueError, match="FILE<TAB>CAPTION"):
        load_pair_dataset(pair_config(tmp_path))


def test_caption_path_outside_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_images(tmp_path, ["secret.png"])
    (folder / "captions.txt").write_text("../secret.png\tescape\n", encoding="utf-8")
    with pytest.raises(ValueError, match="outside"):
        load_pair_dataset(pair_config(folder))


def test_unreadable_image_skipped(tmp_path):
    write_images(tmp_path, ["a.png"])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "captions.txt").write_text("a.png\tgood\nbroken.png\tbad\n", encoding="utf-8")
    pairs = load_pair_dataset(pair_config(tmp_path))
    assert pairs.captions == ["good"]


def test_jsonl_pairs(tmp_path):
    write_images(tmp_path, ["img/a.png", "img/b.png"])
    records = [
        {"path": "img/a.png", "title": "A", "body": "first", "kind": "x"},
        {"path": "img/b.png", "title": "B", "body": "", "kind": "y"},
    ]
    with gzip.open(tmp_path / "pairs.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(record) for record in records))
    config = pair_config(tmp_path / "pairs.jsonl.gz", image_field="path", text_field="title+body", label_field="kind")
    pairs = load_pair_dataset(config)
    assert pairs.captions == ["A\nfirst", "B"]
    assert pairs.labels.tolist() == [0, 1]


def test_jsonl_needs_image_field(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="image-field"):
        load_pair_dataset(pair_config(tmp_path / "pairs.jsonl"))


def test_npz_with_rule(tmp_path):
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "glyphs.npz", images=images, labels=np.array([0, 1, 2, 3]), font_ids=np.array([5, 5, 6, 6]))
    fonts = {"5": {"family": "Free Serif", "style": "Bold"}, "6": {"family": "Free Mono", "style": "Regular"}}
    (tmp_path / "fonts.json").write_text(json.dumps(fonts), encoding="utf-8")
    pairs = load_pair_dataset(pair_config(tmp_path / "glyphs.npz", caption_rule="glyphs"))
    assert pairs.captions == [
        "the letter A in a bold serif font",
        "the letter B in a bold serif font",
        "the letter C in a monospace font",
        "the letter D in a monospace font",
    ]


def test_npz_needs_captions(tmp_path):
    np.savez(tmp_path / "plain.npz", images=np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="caption-rule"):
        load_pair_dataset(pair_config(tmp_path / "plain.npz"))


def test_missing_fonts_file(tmp_path):
    np.savez(tmp_path / "glyphs.npz", images=np.zeros((2, 8, 8), dtype=np.uint8), labels=np.array([0, 1]), font_ids=np.array([0, 0]))
    config = pair_config(tmp_path / "glyphs.npz", caption_rule="glyphs", fonts_json=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="does not exist"):
        load_pair_dataset(config)


def test_subset_keeps_pairs(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.arange(3 * 64, dtype=np.uint8).reshape(3, 8, 8), labels=np.array([0, 1, 2]))
    pairs = load_pair_dataset(pair_config(tmp_path / "d.npz", caption_rule="letter"))
    part = pairs.subset(torch.tensor([2, 0]))
    assert isinstance(part, PairDataset)
    assert part.captions == ["the letter C", "the letter A"]
    assert torch.equal(part.images.images, pairs.images.images[[2, 0]])
