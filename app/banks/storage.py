"""On-disk layout of one bank, written so that a crash at any point leaves a consistent bank.

A bank folder contains ``meta.json`` and one version of two data files, the FAISS index
``index-<version>.faiss`` and the leave-one-out neighbour lists
``neighbors-<version>.npz``. A save writes the data files of the next version, then
replaces ``meta.json``, which names that version. The rename of ``meta.json`` is the
commit point: before it the previous version is complete and referenced, after it the new
one is. Files of other versions are removed only after the commit.

Every file is written to a temporary name, flushed with fsync, renamed into place, and
the folder is flushed with fsync so that the rename itself survives a crash.
``meta.json`` records the SHA-256 of both data files, so that a damaged file that FAISS
or NumPy would still read (a flipped bit in a vector) is detected at load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.banks.base import BankConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_FILE = "meta.json"
_DATA_FILE = re.compile(r"(index|neighbors)-\d{8}\.(faiss|npz)")


class BankFileError(Exception):
    """A bank file is missing, corrupt or inconsistent with the bank's metadata."""


class BankMeta(BaseModel):
    """The contents of ``meta.json``: settings, sample ids and which data files are current."""

    model_config = ConfigDict(extra="forbid")

    format_version: int
    name: str
    config: BankConfig
    index_kind: Literal["flat", "hnsw"]
    version: int = Field(ge=0)
    index_file: str
    neighbors_file: str
    ids: list[str]
    threshold: float | None
    # Absent in banks saved before checksums were recorded; those files are not verified.
    index_sha256: str | None = None
    neighbors_sha256: str | None = None

    @model_validator(mode="after")
    def _check(self) -> BankMeta:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported; expected {FORMAT_VERSION}")
        if self.index_file != index_file_name(self.version):
            raise ValueError(f"index_file {self.index_file!r} does not match version {self.version}")
        if self.neighbors_file != neighbors_file_name(self.version):
            raise ValueError(f"neighbors_file {self.neighbors_file!r} does not match version {self.version}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids contain duplicates")
        return self


@dataclass
class BankFiles:
    """A bank as read from disk."""

    meta: BankMeta
    index: faiss.IndexIDMap2
    neighbor_distances: np.ndarray  # (N, K) float64, inf-padded
    neighbor_ids: np.ndarray  # (N, K) int64, -1-padded


def index_file_name(version: int) -> str:
    return f"index-{version:08d}.faiss"


def neighbors_file_name(version: int) -> str:
    return f"neighbors-{version:08d}.npz"


def save_bank(folder: Path, files: BankFiles) -> None:
    """Write the data files of ``files.meta.version``, then commit them by replacing ``meta.json``.

    NOTE: every save rewrites the whole index, neighbour lists and id list, so an add costs
    time proportional to the bank's size. Large banks with frequent small adds would need
    an append-only log of added vectors, compacted now and then.
    """
    meta = files.meta
    _write_atomic(folder / meta.index_file, lambda path: faiss.write_index(files.index, str(path)))
    _write_atomic(folder / meta.neighbors_file, lambda path: _write_neighbors(path, files))
    fsync_dir(folder)
    checksums = {
        "index_sha256": file_sha256(folder / meta.index_file),
        "neighbors_sha256": file_sha256(folder / meta.neighbors_file),
    }
    meta = meta.model_copy(update=checksums)

    text = meta.model_dump_json(indent=1) + "\n"
    _write_atomic(folder / META_FILE, lambda path: path.write_text(text, encoding="utf-8"))
    fsync_dir(folder)
    _remove_stale_files(folder, keep={meta.index_file, meta.neighbors_file, META_FILE})


def load_bank(folder: Path) -> BankFiles:
    """Read and cross-check a bank folder; raise BankFileError naming the bad file."""
    meta = _read_meta(folder / META_FILE)
    if meta.name != folder.name:
        raise BankFileError(f"{folder / META_FILE}: name {meta.name!r} does not match the folder name")
    _verify_checksum(folder / meta.index_file, meta.index_sha256)
    _verify_checksum(folder / meta.neighbors_file, meta.neighbors_sha256)
    index = _read_index(folder / meta.index_file, meta)
    distances, ids = _read_neighbors(folder / meta.neighbors_file, meta)
    _remove_stale_files(folder, keep={meta.index_file, meta.neighbors_file, META_FILE})
    return BankFiles(meta=meta, index=index, neighbor_distances=distances, neighbor_ids=ids)


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_checksum(path: Path, expected: str | None) -> None:
    if expected is None:
        return
    try:
        actual = file_sha256(path)
    except FileNotFoundError as error:
        raise BankFileError(f"{path} is missing") from error
    except OSError as error:
        raise BankFileError(f"{path} is not readable: {error}") from error
    if actual != expected:
        raise BankFileError(f"{path} is corrupt: its SHA-256 does not match the one recorded in {META_FILE}")


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (creations, renames, removals) to disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_neighbors(path: Path, files: BankFiles) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, distances=files.neighbor_distances, ids=files.neighbor_ids)


def _remove_stale_files(folder: Path, keep: set[str]) -> None:
    """Remove data files of other versions and temporary files left by an interrupted save."""
    for path in folder.iterdir():
        stale = path.name.endswith(".tmp") or _DATA_FILE.fullmatch(path.name) is not None
        if stale and path.name not in keep:
            logger.debug("removing stale bank file %s", path)
            try:
                path.unlink(missing_ok=True)
            except OSError as error:  # harmless: the next save or start-up retries
                logger.warning("could not remove stale bank file %s: %s", path, error)


def _read_meta(path: Path) -> BankMeta:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise BankFileError(f"{path} is missing") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BankFileError(f"{path} is not readable JSON: {error}") from error
    try:
        return BankMeta.model_validate(raw)
    except ValidationError as error:
        raise BankFileError(f"{path} is invalid: {error}") from error


def _read_index(path: Path, meta: BankMeta) -> faiss.IndexIDMap2:
    if not path.is_file():
        raise BankFileError(f"{path} is missing")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as error:  # FAISS reports every read failure as RuntimeError
        raise BankFileError(f"{path} is not a readable FAISS index: {error}") from error

    if not isinstance(index, faiss.IndexIDMap2):
        raise BankFileError(f"{path} contains a {type(index).__name__}, expected an IndexIDMap2")
    inner = faiss.downcast_index(index.index)
    expected_inner = faiss.IndexHNSWFlat if meta.index_kind == "hnsw" else (faiss.IndexFlatIP, faiss.IndexFlatL2)
    expected_metric = faiss.METRIC_INNER_PRODUCT if meta.config.metric == "cosine" else faiss.METRIC_L2
    problems = []
    if not isinstance(inner, expected_inner):
        problems.append(f"inner index is {type(inner).__name__}, expected {meta.index_kind}")
    if index.metric_type != expected_metric:
        problems.append(f"metric {index.metric_type} does not match {meta.config.metric}")
    if index.d != meta.config.dim:
        problems.append(f"width {index.d} does not match {meta.config.dim}")
    if index.ntotal != len(meta.ids):
        problems.append(f"{index.ntotal} vectors but {len(meta.ids)} ids in {META_FILE}")
    elif not np.array_equal(faiss.vector_to_array(index.id_map), np.arange(index.ntotal)):
        problems.append("vector ids are not 0..N-1 in insertion order")
    if problems:
        raise BankFileError(f"{path} does not match {META_FILE}: {'; '.join(problems)}")
    return index


def _read_neighbors(path: Path, meta: BankMeta) -> tuple[np.ndarray, np.ndarray]:
    expected = (len(meta.ids), meta.config.k)
    try:
        # The handle is opened here because np.load leaves its own open when the archive is invalid.
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
            distances = archive["distances"]
            ids = archive["ids"]
    except FileNotFoundError as error:
        raise BankFileError(f"{path} is missing") from error
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise BankFileError(f"{path} is not a readable neighbour file: {error}") from error

    if distances.shape != expected or ids.shape != expected:
        raise BankFileError(f"{path}: arrays have shapes {distances.shape} and {ids.shape}, expected {expected}")
    if distances.dtype != np.float64 or ids.dtype != np.int64:
        raise BankFileError(f"{path}: arrays have dtypes {distances.dtype} and {ids.dtype}, expected float64 and int64")
    if ids.size and (ids.min() < -1 or ids.max() >= len(meta.ids)):
        raise BankFileError(f"{path}: neighbour ids fall outside 0..{len(meta.ids) - 1}")
    return distances, ids
