# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Tests for the local GLUE loader: real shared data (sizes, labels), tiny fixtures for all layouts, error paths."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import datasets
import numpy as np
import pytest

from lntune.glue import TASKS, load_glue, normalize_task

from ..models import SHARED_DATA

GLUE_DIR = SHARED_DATA / "glue"
TINY_DIR = Path(__file__).resolve().parents[1] / "data" / "glue_tiny"

# From /work/shared/data/README.md (GLUE section): (train rows, dev rows, train label counts, dev label counts).
REAL = {
    "sst2": (67_349, 872, [29_780, 37_569], [428, 444]),
    "cola": (8_551, 1_043, [2_528, 6_023], [322, 721]),
    "mrpc": (3_668, 408, [1_194, 2_474], [129, 279]),
    "rte": (2_490, 277, [1_249, 1_241], [146, 131]),
    "stsb": (5_749, 1_500, None, None),
}

needs_real_data = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"shared GLUE data not found at {GLUE_DIR}")


@cache
def _real(task: str) -> datasets.DatasetDict:
    return load_glue(GLUE_DIR, task)


# ---------------------------------------------------------------------------------------------------------------
# Real shared data
# ---------------------------------------------------------------------------------------------------------------


@needs_real_data
@pytest.mark.parametrize("task", sorted(REAL))
def test_real_sizes_columns_and_labels(task: str) -> None:
    n_train, n_dev, train_counts, dev_counts = REAL[task]
    ds = _real(task)
    spec = TASKS[task]
    assert list(ds) == ["train", "validation"]
    assert len(ds["train"]) == n_train
    assert len(ds["validation"]) == n_dev
    for split in ds.values():
        assert split.column_names == [*spec.text_keys, "label", "idx"]
        assert split["idx"] == list(range(len(split)))
        for key in spec.text_keys:
            assert all(isinstance(t, str) and t for t in split[key])
    if spec.is_regression:
        for split in ds.values():
            labels = np.asarray(split["label"])
            assert labels.dtype.kind == "f"
            assert labels.min() >= 0.0 and labels.max() <= 5.0
    else:
        assert np.bincount(ds["train"]["label"], minlength=2).tolist() == train_counts
        assert np.bincount(ds["validation"]["label"], minlength=2).tolist() == dev_counts
        assert ds["train"].features["label"].names == list(spec.label_names)


@needs_real_data
def test_real_first_rows_keep_text_verbatim() -> None:
    # MRPC dev row 0: sentence2 starts with an unbalanced quote, which QUOTE_NONE must keep.
    mrpc = _real("mrpc")["validation"][0]
    assert mrpc["label"] == 1
    assert mrpc["sentence2"] == '" The foodservice pie business does not fit our long-term growth strategy .'
    # RTE dev row 0 is not_entailment -> id 1.
    assert _real("rte")["validation"][0]["label"] == 1
    # CoLA has no header: row 0 is data; the sentence is the 4th column.
    cola = _real("cola")["validation"][0]
    assert cola == {"sentence": "The sailors rode the breeze clear of the rocks.", "label": 1, "idx": 0}
    # SST-2 keeps the trailing space, as the Hub dataset does.
    assert _real("sst2")["validation"][0]["sentence"] == "it 's a charming and often affecting journey . "
    stsb = _real("stsb")["validation"]
    assert stsb[0]["label"] == pytest.approx(5.0) and stsb[1]["label"] == pytest.approx(4.75)


@needs_real_data
def test_max_samples_seeded_and_deterministic() -> None:
    a = load_glue(GLUE_DIR, "rte", max_train_samples=100, seed=0)
    b = load_glue(GLUE_DIR, "rte", max_train_samples=100, seed=0)
    c = load_glue(GLUE_DIR, "rte", max_train_samples=100, seed=1)
    assert len(a["train"]) == 100
    assert a["train"]["idx"] == b["train"]["idx"]
    assert a["train"]["idx"] != c["train"]["idx"]
    assert a["train"]["idx"] == sorted(set(a["train"]["idx"]))  # a subset, kept in file order
    assert a["train"]["idx"] != list(range(100))  # random, not the first rows
    # The subset is exactly the documented numpy draw.
    expected = np.sort(np.random.default_rng(0).permutation(2_490)[:100]).tolist()
    assert a["train"]["idx"] == expected
    # Rows carry their original content.
    full = _real("rte")["train"]
    assert a["train"][5] == full[a["train"][5]["idx"]]
    # max_eval_samples is independent of max_train_samples; limits above the size keep everything.
    assert len(a["validation"]) == 277
    d = load_glue(GLUE_DIR, "rte", max_train_samples=10_000, max_eval_samples=50, seed=0)
    assert len(d["train"]) == 2_490 and len(d["validation"]) == 50
    e = load_glue(GLUE_DIR, "rte", max_eval_samples=50, seed=0)
    assert e["validation"]["idx"] == d["validation"]["idx"]


# ---------------------------------------------------------------------------------------------------------------
# Tiny fixtures: every task layout, including the tasks not in the shared data
# ---------------------------------------------------------------------------------------------------------------

TINY_SIZES = {
    "sst2": (3, {"validation": 2}),
    "cola": (3, {"validation": 2}),
    "mrpc": (2, {"validation": 2}),
    "rte": (2, {"validation": 2}),
    "stsb": (2, {"validation": 2}),
    "qnli": (2, {"validation": 1}),
    "qqp": (2, {"validation": 1}),
    "wnli": (2, {"validation": 1}),
    "mnli": (3, {"validation": 2, "validation_matched": 2, "validation_mismatched": 3}),
}


def test_task_table_covers_glue() -> None:
    assert set(TASKS) == set(TINY_SIZES)
    for name, spec in TASKS.items():
        assert spec.name == name
        assert spec.num_labels == (1 if name == "stsb" else len(spec.label_list))
        assert len(spec.label_names) == len(spec.label_list)
        assert spec.id2label == dict(enumerate(spec.label_names))
    assert TASKS["rte"].label_list == ("entailment", "not_entailment")
    assert TASKS["mnli"].label_list == ("entailment", "neutral", "contradiction")
    assert TASKS["stsb"].is_regression and not TASKS["cola"].is_regression
    assert normalize_task("SST-2") == "sst2" and normalize_task("STS-B") == "stsb"


@pytest.mark.parametrize("task", sorted(TINY_SIZES))
def test_tiny_all_layouts(task: str) -> None:
    n_train, dev_sizes = TINY_SIZES[task]
    ds = load_glue(TINY_DIR, task)
    spec = TASKS[task]
    assert list(ds)[:2] == ["train", "validation"]
    assert set(ds) == {"train", *dev_sizes}
    assert len(ds["train"]) == n_train
    assert {k: len(ds[k]) for k in dev_sizes} == dev_sizes
    for split in ds.values():
        assert split.column_names == [*spec.text_keys, "label", "idx"]


def test_tiny_label_ids_and_texts() -> None:
    mnli = load_glue(TINY_DIR, "mnli")
    assert mnli["train"]["label"] == [0, 1, 2]
    assert mnli["train"][0]["premise"] == "A man walks." and mnli["train"][0]["hypothesis"] == "A person walks."
    assert mnli["validation"]["label"] == mnli["validation_matched"]["label"] == [0, 2]
    assert mnli["validation_mismatched"]["label"] == [1, 1, 0]
    assert load_glue(TINY_DIR, "rte")["train"]["label"] == [0, 1]
    assert load_glue(TINY_DIR, "qnli")["train"]["label"] == [0, 1]
    assert load_glue(TINY_DIR, "wnli")["train"]["label"] == [1, 0]
    qqp = load_glue(TINY_DIR, "qqp")["train"][0]
    assert qqp == {
        "question1": "How do I learn Python?",
        "question2": "What is the best way to learn Python?",
        "label": 1,
        "idx": 0,
    }
    assert load_glue(TINY_DIR, "sst2")["train"][1]["sentence"] == 'dull and "lifeless '
    assert load_glue(TINY_DIR, "cola")["train"]["sentence"][2] == 'He said "hi".'
    assert load_glue(TINY_DIR, "stsb")["validation"]["label"] == pytest.approx([3.75, 1.2])


def test_tiny_mnli_subsample_applies_to_each_validation_split() -> None:
    ds = load_glue(TINY_DIR, "mnli", max_train_samples=2, max_eval_samples=1, seed=3)
    assert len(ds["train"]) == 2
    assert len(ds["validation_matched"]) == len(ds["validation_mismatched"]) == 1
    assert ds["validation"]["idx"] == ds["validation_matched"]["idx"]


def test_original_glue_folder_names_and_bom(tmp_path: Path) -> None:
    shutil.copytree(TINY_DIR / "sst2", tmp_path / "SST-2")
    (tmp_path / "MRPC").mkdir()
    for name in ("train.tsv", "dev.tsv"):  # original MRPC files start with a UTF-8 byte-order mark
        text = (TINY_DIR / "mrpc" / name).read_text(encoding="utf-8")
        (tmp_path / "MRPC" / name).write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert len(load_glue(tmp_path, "SST-2")["train"]) == 3
    assert load_glue(tmp_path, "mrpc")["validation"]["label"] == [1, 0]


def test_bad_max_samples() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_train_samples"):
            load_glue(TINY_DIR, "rte", max_train_samples=bad)
    with pytest.raises(ValueError, match="max_eval_samples"):
        load_glue(TINY_DIR, "rte", max_eval_samples=0)


# ---------------------------------------------------------------------------------------------------------------
# Error paths
# ---------------------------------------------------------------------------------------------------------------


def _copy_task(tmp_path: Path, task: str) -> Path:
    """Copy a tiny task folder to tmp_path (to be broken by the test); return the task folder."""
    shutil.copytree(TINY_DIR / task, tmp_path / task)
    return tmp_path / task


def test_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_glue(missing, "rte")
    assert str(missing) in str(err.value)


def test_unknown_task() -> None:
    with pytest.raises(ValueError, match="Unknown GLUE task 'squad'") as err:
        load_glue(TINY_DIR, "squad")
    for name in TASKS:
        assert name in str(err.value)


def test_missing_task_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_glue(tmp_path, "rte")
    msg = str(err.value)
    assert str(tmp_path / "rte" / "train.tsv") in msg and str(tmp_path / "RTE" / "dev.tsv") in msg


def test_missing_dev_file(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "mnli")
    (task_dir / "dev_mismatched.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="Missing mnli file") as err:
        load_glue(tmp_path, "mnli")
    assert str(task_dir / "dev_mismatched.tsv") in str(err.value)


def test_label_outside_label_set(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "rte")
    path = task_dir / "dev.tsv"
    path.write_text(path.read_text().replace("\tnot_entailment\n", "\tcontradiction\n"))
    with pytest.raises(ValueError, match="line 3: label 'contradiction' is not a rte label") as err:
        load_glue(tmp_path, "rte")
    assert str(path) in str(err.value) and "not_entailment" in str(err.value)


def test_cola_label_outside_label_set(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "cola")
    path = task_dir / "train.tsv"
    path.write_text(path.read_text().replace("gj04\t0\t*", "gj04\t2\t*"))
    with pytest.raises(ValueError, match=r"line 2: label '2' is not a cola label"):
        load_glue(tmp_path, "cola")


@pytest.mark.parametrize("score", ["high", "5.5", "-0.1", "nan"])
def test_stsb_bad_score(tmp_path: Path, score: str) -> None:
    task_dir = _copy_task(tmp_path, "stsb")
    path = task_dir / "train.tsv"
    path.write_text(path.read_text().replace("\t0.000\n", f"\t{score}\n"))
    with pytest.raises(ValueError, match=rf"train.tsv, line 3: invalid stsb score '{score}'"):
        load_glue(tmp_path, "stsb")


def test_empty_split(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "sst2")
    path = task_dir / "dev.tsv"
    path.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match="has no data rows") as err:
        load_glue(tmp_path, "sst2")
    assert str(path) in str(err.value)
    path.write_text("")
    with pytest.raises(ValueError, match="is empty") as err:
        load_glue(tmp_path, "sst2")
    assert str(path) in str(err.value)
    # Headerless CoLA: a file with no rows at all is an empty split.
    cola_dir = _copy_task(tmp_path, "cola")
    (cola_dir / "train.tsv").write_text("\n")
    with pytest.raises(ValueError, match="cola split would be empty"):
        load_glue(tmp_path, "cola")


def test_malformed_row(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "mrpc")
    path = task_dir / "train.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("\t", " ", 1)  # one field fewer on line 3
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"line 3: malformed row with 4 tab-separated fields, expected 5") as err:
        load_glue(tmp_path, "mrpc")
    assert str(path) in str(err.value)


def test_cola_malformed_row(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "cola")
    path = task_dir / "dev.tsv"
    path.write_text(path.read_text() + "gj04\t1\tA sentence without the mark column.\n")
    with pytest.raises(ValueError, match=r"dev.tsv, line 3: malformed row with 3 .* expected 4"):
        load_glue(tmp_path, "cola")


def test_wrong_header(tmp_path: Path) -> None:
    task_dir = _copy_task(tmp_path, "qnli")
    shutil.copy(TINY_DIR / "rte" / "train.tsv", task_dir / "train.tsv")  # RTE header in a QNLI folder
    with pytest.raises(ValueError, match=r"header line lacks column\(s\) \['question', 'sentence'\]"):
        load_glue(tmp_path, "qnli")
