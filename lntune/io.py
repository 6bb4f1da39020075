# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Atomic writes: the one place where lntune writes files (results, plots, adapters, checkpoints).

Every writer goes to a temp file in the target folder and renames it into place, so a crash or a kill never leaves
half a file where a user expects theirs; the renamed file gets the permissions a plain `open(path, "w")` would give
(0o666 minus the umask), whatever the writer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

from safetensors.torch import save_file

PathLike = Union[str, os.PathLike]


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path` (same suffix, so format-sniffing writers work); on success, rename it to
    `path` with plain-file permissions; on any error, delete it and re-raise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_ready(obj: Any) -> Any:
    """Replace NaN/inf floats by None (recursively), so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def write_json(path: PathLike, data: Any, indent: Optional[int] = 2) -> None:
    """Write `data` as strict JSON (NaN/inf become null) to `path` atomically."""
    write_text(path, json.dumps(json_ready(data), indent=indent) + "\n")


def save_safetensors(tensors: dict, path: PathLike, metadata: Optional[dict[str, str]] = None) -> None:
    """`safetensors.torch.save_file`, atomically."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_figure(figure: Any, path: PathLike, **kwargs: Any) -> None:
    """`figure.savefig(path)` (matplotlib), atomically; the format follows the suffix of `path`."""
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), **kwargs)


@contextmanager
def atomic_directory(path: PathLike) -> Iterator[Path]:
    """Yield a fresh temp folder next to `path`; on success it replaces `path` as a whole (renamed, not copied).

    An existing `path` is moved aside first and deleted only once the new folder is in place; on error the temp folder
    is removed and `path` is left untouched. The folder gets the permissions `mkdir` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(source: PathLike, path: PathLike) -> None:
    """Put the finished folder `source` at `path` by renames (same file system): an existing `path` is moved aside
    first and deleted only once `source` is in place, so `path` never holds a mix of the two. For folders that several
    processes write (e.g. accelerate's `save_state`), where `atomic_directory`'s private temp folder does not fit."""
    path = Path(path)
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, old)
    os.replace(source, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_files(directory: PathLike) -> Iterator[Path]:
    """Yield a scratch folder inside `directory`; on success every file written there is renamed into `directory`
    (replacing files of the same name, leaving the others), then the scratch folder goes. For writers that only take
    a folder (e.g. peft's `PeftConfig.save_pretrained`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".tmp-") as tmp:
        yield Path(tmp)
        for name in sorted(os.listdir(tmp)):
            source = Path(tmp) / name
            if source.is_file():
                os.chmod(source, 0o666 & ~current_umask())
                os.replace(source, directory / name)
