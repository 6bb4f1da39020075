# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Atomic writes (`lntune.io`) and bundled assets (`lntune.assets`)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from lntune import assets
from lntune.io import atomic_path, current_umask, write_json, write_text


def test_write_text_and_json_give_plain_file_permissions(tmp_path) -> None:
    write_text(tmp_path / "a" / "b.md", "hello")
    write_json(tmp_path / "c.json", {"x": float("nan"), "y": [1.5, float("inf")]})
    assert (tmp_path / "a" / "b.md").read_text() == "hello"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": None, "y": [1.5, None]}  # strict JSON
    expected = 0o666 & ~current_umask()
    for path in (tmp_path / "a" / "b.md", tmp_path / "c.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.json"]  # no temp files left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    target = tmp_path / "results.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_assets_find_minilm_and_the_bundled_data() -> None:
    path = assets.minilm_dir()
    assert (path / "config.json").is_file() and assets.is_minilm(str(path))
    assert not assets.is_minilm("/somewhere/else/model")
    assert (assets.GLUE_DIR / "sst2" / "train.tsv").is_file()
    assert "classifier" in assets.HEAD_NAMES


def test_atomic_directory_replaces_the_whole_folder_or_nothing(tmp_path) -> None:
    from lntune.io import atomic_directory

    target = tmp_path / "ckpt"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt"
    ]


def test_replace_directory_swaps_a_finished_folder_in(tmp_path) -> None:
    from lntune.io import replace_directory

    staging, target = tmp_path / ".staging", tmp_path / "checkpoint"
    for text in ("1", "2"):
        staging.mkdir()
        (staging / f"{text}.txt").write_text(text)
        replace_directory(staging, target)
        assert [p.name for p in target.iterdir()] == [f"{text}.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_atomic_files_moves_each_file_into_place(tmp_path) -> None:
    from lntune.io import atomic_files

    (tmp_path / "keep.txt").write_text("other")
    with atomic_files(tmp_path) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "keep.txt"]
    assert stat.S_IMODE(os.stat(tmp_path / "adapter_config.json").st_mode) == 0o666 & ~current_umask()
