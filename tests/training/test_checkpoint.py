import random

import numpy as np
import pytest
import torch

from training.checkpoint import (
    capture_rng_states,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    restore_rng_states,
    save_checkpoint,
)


def test_save_checkpoint_keeps_newest_k(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]
    assert not list(tmp_path.glob(".checkpoint-*"))


def test_save_checkpoint_keep_zero_keeps_all(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, keep=0)
    assert len(list_checkpoints(tmp_path)) == 3


def test_save_checkpoint_rejects_negative_keep(tmp_path):
    with pytest.raises(ValueError, match="keep must be non-negative"):
        save_checkpoint(tmp_path, 1, {}, keep=-1)


def test_list_checkpoints_ignores_temporary_files(tmp_path):
    save_checkpoint(tmp_path, 5, {"step": 5}, keep=2)
    (tmp_path / ".checkpoint-abc.tmp").write_bytes(b"partial")
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-00000005.pt"]


def test_resolve_resume_auto_picks_newest(tmp_path):
    save_checkpoint(tmp_path, 9, {}, keep=0)
    save_checkpoint(tmp_path, 10, {}, keep=0)
    assert resolve_resume("auto", tmp_path).name == "checkpoint-00000010.pt"


def test_resolve_resume_auto_without_checkpoints_is_none(tmp_path):
    assert resolve_resume("auto", tmp_path / "empty") is None


def test_resolve_resume_folder_picks_newest(tmp_path):
    save_checkpoint(tmp_path / "run", 3, {}, keep=0)
    assert resolve_resume(str(tmp_path / "run"), tmp_path / "other").name == "checkpoint-00000003.pt"


def test_resolve_resume_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_resume(str(tmp_path / "checkpoint-00000001.pt"), tmp_path)


def test_resolve_resume_folder_without_checkpoints_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)


def test_rng_states_round_trip_through_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"rng": capture_rng_states()}, keep=1)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    restore_rng_states(load_checkpoint(path)["rng"])
    actual = (random.random(), float(np.random.rand()), torch.rand(3))
    assert actual[0] == expected[0]
    assert actual[1] == expected[1]
    assert torch.equal(actual[2], expected[2])
