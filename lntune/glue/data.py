# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""GLUE from local TSV files, as ``datasets.DatasetDict`` objects shaped like the Hub ``glue`` dataset.

The GLUE TSVs differ per task (CoLA has no header; MRPC names its columns ``#1 String``; RTE stores labels as
strings; STS-B has a float ``score``) and contain unbalanced ``"`` characters, so the pandas / ``datasets`` CSV
readers misparse them. They are read here with :mod:`csv` and ``quoting=csv.QUOTE_NONE``, checked row by row, and
turned into datasets with the Hub dataset's column names, label ids and ``idx`` column, so recipes work unchanged
with ``load_glue`` (local files) or ``load_glue_from_hub`` (``--dataset_name glue``).

Layout of ``data_dir``: one folder per task, named either like the task (``sst2``, ``stsb``, ...) or like the
original GLUE download (``SST-2``, ``STS-B``, ...), holding ``train.tsv`` and ``dev.tsv`` (MNLI:
``dev_matched.tsv`` and ``dev_mismatched.tsv``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

__all__ = ["TASKS", "GlueTask", "TsvLayout", "load_glue", "load_glue_from_hub", "normalize_task"]

# The Hub dataset repository that ``datasets.load_dataset("glue", ...)`` resolves to.
HUB_GLUE_DATASET = "nyu-mll/glue"

# STS-B similarity scores lie in [0, 5].
_STSB_RANGE = (0.0, 5.0)


@dataclass(frozen=True)
class TsvLayout:
    """How to read one task's TSV files.

    ``columns`` maps each output text key to its source column: a header name when ``header`` is true, else a
    0-based position. ``label_column`` is the same for the label. ``num_columns`` is the expected number of fields
    per row for headerless files; files with a header must have as many fields per row as header fields.
    """

    header: bool
    columns: Mapping[str, str | int]
    label_column: str | int
    num_columns: int | None = None


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its text columns, labels, metrics, files and file layout.

    ``label_list`` holds the label values *as written in the TSV files*; a label's id is its position in this list
    (RTE ``entailment`` -> 0, ``not_entailment`` -> 1), which matches the Hub ``glue`` dataset. ``label_names`` are
    the Hub dataset's ``ClassLabel`` names for the same ids (useful for ``id2label``). Both are empty for the STS-B
    regression task (``num_labels == 1``). ``metric_names`` are the keys that :func:`lntune.glue.glue_metric`
    returns for the task. ``dev_files`` maps the validation split name(s) to file names.
    """

    name: str
    text_keys: tuple[str, ...]
    num_labels: int
    label_list: tuple[str, ...]
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    dir_names: tuple[str, ...]
    train_file: str
    dev_files: Mapping[str, str]
    layout: TsvLayout

    @property
    def is_regression(self) -> bool:
        """True for STS-B, whose label is a float score rather than a class id."""
        return self.num_labels == 1

    @property
    def id2label(self) -> dict[int, str]:
        """Label id -> Hub label name (empty for regression)."""
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        """Hub label name -> label id (empty for regression)."""
        return {name: i for i, name in enumerate(self.label_names)}


_BINARY = ("0", "1")
_VALIDATION = {"validation": "dev.tsv"}

TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        name="cola",
        text_keys=("sentence",),
        num_labels=2,
        label_list=_BINARY,
        label_names=("unacceptable", "acceptable"),
        metric_names=("matthews_correlation",),
        dir_names=("cola", "CoLA"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        # No header: source code, label, original author mark, sentence.
        layout=TsvLayout(header=False, columns={"sentence": 3}, label_column=1, num_columns=4),
    ),
    "sst2": GlueTask(
        name="sst2",
        text_keys=("sentence",),
        num_labels=2,
        label_list=_BINARY,
        label_names=("negative", "positive"),
        metric_names=("accuracy",),
        dir_names=("sst2", "SST-2"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(header=True, columns={"sentence": "sentence"}, label_column="label"),
    ),
    "mrpc": GlueTask(
        name="mrpc",
        text_keys=("sentence1", "sentence2"),
        num_labels=2,
        label_list=_BINARY,
        label_names=("not_equivalent", "equivalent"),
        metric_names=("accuracy", "f1"),
        dir_names=("mrpc", "MRPC"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(
            header=True, columns={"sentence1": "#1 String", "sentence2": "#2 String"}, label_column="Quality"
        ),
    ),
    "qqp": GlueTask(
        name="qqp",
        text_keys=("question1", "question2"),
        num_labels=2,
        label_list=_BINARY,
        label_names=("not_duplicate", "duplicate"),
        metric_names=("accuracy", "f1"),
        dir_names=("qqp", "QQP"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(
            header=True, columns={"question1": "question1", "question2": "question2"}, label_column="is_duplicate"
        ),
    ),
    "stsb": GlueTask(
        name="stsb",
        text_keys=("sentence1", "sentence2"),
        num_labels=1,
        label_list=(),
        label_names=(),
        metric_names=("pearson", "spearmanr"),
        dir_names=("stsb", "STS-B"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(
            header=True, columns={"sentence1": "sentence1", "sentence2": "sentence2"}, label_column="score"
        ),
    ),
    "mnli": GlueTask(
        name="mnli",
        text_keys=("premise", "hypothesis"),
        num_labels=3,
        label_list=("entailment", "neutral", "contradiction"),
        label_names=("entailment", "neutral", "contradiction"),
        metric_names=("accuracy",),
        dir_names=("mnli", "MNLI"),
        train_file="train.tsv",
        dev_files={"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
        layout=TsvLayout(
            header=True, columns={"premise": "sentence1", "hypothesis": "sentence2"}, label_column="gold_label"
        ),
    ),
    "qnli": GlueTask(
        name="qnli",
        text_keys=("question", "sentence"),
        num_labels=2,
        label_list=("entailment", "not_entailment"),
        label_names=("entailment", "not_entailment"),
        metric_names=("accuracy",),
        dir_names=("qnli", "QNLI"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(header=True, columns={"question": "question", "sentence": "sentence"}, label_column="label"),
    ),
    "rte": GlueTask(
        name="rte",
        text_keys=("sentence1", "sentence2"),
        num_labels=2,
        label_list=("entailment", "not_entailment"),
        label_names=("entailment", "not_entailment"),
        metric_names=("accuracy",),
        dir_names=("rte", "RTE"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(
            header=True, columns={"sentence1": "sentence1", "sentence2": "sentence2"}, label_column="label"
        ),
    ),
    "wnli": GlueTask(
        name="wnli",
        text_keys=("sentence1", "sentence2"),
        num_labels=2,
        label_list=_BINARY,
        label_names=("not_entailment", "entailment"),
        metric_names=("accuracy",),
        dir_names=("wnli", "WNLI"),
        train_file="train.tsv",
        dev_files=_VALIDATION,
        layout=TsvLayout(
            header=True, columns={"sentence1": "sentence1", "sentence2": "sentence2"}, label_column="label"
        ),
    ),
}


def normalize_task(task: str) -> str:
    """Return the canonical task name (``"SST-2"`` -> ``"sst2"``), or raise ``ValueError`` listing known tasks."""
    key = str(task).strip().lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}. Known tasks: {', '.join(sorted(TASKS))}.")
    return key


def _features(spec: GlueTask) -> datasets.Features:
    """Features matching the Hub ``glue`` dataset: string texts, ClassLabel (or float32 score), int32 ``idx``."""
    feats: dict[str, Any] = {key: datasets.Value("string") for key in spec.text_keys}
    feats["label"] = (
        datasets.Value("float32") if spec.is_regression else datasets.ClassLabel(names=list(spec.label_names))
    )
    feats["idx"] = datasets.Value("int32")
    return datasets.Features(feats)


def _parse_label(spec: GlueTask, value: str, path: Path, line: int) -> int | float:
    """Map a raw label string to a class id (or a float score for STS-B); raise ``ValueError`` if it is invalid."""
    if spec.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = float("nan")
        low, high = _STSB_RANGE
        if not low <= score <= high:  # also rejects nan
            raise ValueError(
                f"{path}, line {line}: invalid {spec.name} score {value!r}; expected a number in [{low:g}, {high:g}]."
            )
        return score
    try:
        return spec.label_list.index(value)
    except ValueError:
        raise ValueError(
            f"{path}, line {line}: label {value!r} is not a {spec.name} label; expected one of {list(spec.label_list)}."
        ) from None


def _read_tsv(spec: GlueTask, path: Path) -> dict[str, list[Any]]:
    """Parse one GLUE TSV file into columns ``{text keys..., "label", "idx"}``.

    Reads with ``csv.QUOTE_NONE`` (the files contain unbalanced ``"``) and ``utf-8-sig`` (original MRPC files start
    with a byte-order mark). Blank lines are skipped. ``idx`` is the 0-based position of the row among the file's
    data rows, as in the Hub dataset. Raises ``ValueError`` naming the file (and line) for a missing header column, a
    row with the wrong number of fields, a label outside the task's label set, or a file with no data rows.
    """
    layout = spec.layout
    columns: dict[str, list[Any]] = {key: [] for key in spec.text_keys}
    columns["label"] = []
    columns["idx"] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        positions: dict[str, int]
        if layout.header:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path} is empty: expected a header line and at least one data row.")
            wanted = {**layout.columns, "label": layout.label_column}
            missing = [str(col) for col in wanted.values() if col not in header]
            if missing:
                raise ValueError(
                    f"{path}: header line lacks column(s) {missing} needed for {spec.name}; found {header}. "
                    "Is this the right file for the task?"
                )
            positions = {key: header.index(col) for key, col in wanted.items()}  # type: ignore[arg-type]
            expected_fields = len(header)
        else:
            positions = {**layout.columns, "label": layout.label_column}  # type: ignore[dict-item]
            expected_fields = layout.num_columns  # type: ignore[assignment]
        label_pos = positions.pop("label")
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) != expected_fields:
                raise ValueError(
                    f"{path}, line {reader.line_num}: malformed row with {len(row)} tab-separated fields, expected "
                    f"{expected_fields} for {spec.name}. Check the file is an unmodified GLUE TSV (tabs, no quoting)."
                )
            for key, pos in positions.items():
                columns[key].append(row[pos])
            columns["label"].append(_parse_label(spec, row[label_pos], path, reader.line_num))
            columns["idx"].append(len(columns["idx"]))
    if not columns["idx"]:
        raise ValueError(f"{path} has no data rows: the {spec.name} split would be empty.")
    return columns


def task_dir(data_dir: Path, spec: GlueTask) -> Path:
    """The task's folder under ``data_dir``: the first of ``spec.dir_names`` that holds the train file."""
    candidates = [data_dir / name for name in spec.dir_names]
    for cand in candidates:
        if (cand / spec.train_file).is_file():
            return cand
    files = [spec.train_file, *spec.dev_files.values()]
    expected = [str(cand / name) for cand in candidates for name in files]
    raise FileNotFoundError(
        f"No {spec.name} files found under {data_dir}. Expected {' or '.join(str(c) for c in candidates)} "
        f"holding {', '.join(files)} (looked for: {', '.join(expected)})."
    )


def _subsample(ds: datasets.Dataset, max_samples: int | None, seed: int) -> datasets.Dataset:
    """Keep a seeded random subset of ``max_samples`` rows, in file order; no-op if ``None`` or not smaller."""
    if max_samples is None or max_samples >= len(ds):
        return ds
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(len(ds))[:max_samples])
    return ds.select(keep.tolist())


def _check_max(name: str, value: int | None) -> None:
    """Reject non-positive or non-integer ``max_*_samples`` early, with the argument's name."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")


def load_glue(
    data_dir: str | Path,
    task: str,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Load one GLUE task from local TSV files.

    Returns a ``DatasetDict`` with ``train`` and ``validation`` splits (MNLI also ``validation_matched`` and
    ``validation_mismatched``, with ``validation`` = matched). Columns are the task's ``TASKS[task].text_keys``,
    ``label`` (a ``ClassLabel`` id, or a float32 score for STS-B) and ``idx`` (row position in the file), as in the
    Hub ``glue`` dataset.

    ``max_train_samples`` / ``max_eval_samples`` keep a random subset of that many rows of the train split / of each
    validation split. The subset is drawn with ``numpy.random.default_rng(seed).permutation`` (a fresh generator per
    split, so the train subset does not depend on ``max_eval_samples``) and kept in file order; the same seed gives
    the same rows on every run and machine. Splits that are not larger than the limit are kept whole.

    Raises ``FileNotFoundError`` for a missing data dir or task file and ``ValueError`` for an unknown task or a
    malformed file (bad label, wrong column count, empty split), each naming what to fix.
    """
    spec = TASKS[normalize_task(task)]
    _check_max("max_train_samples", max_train_samples)
    _check_max("max_eval_samples", max_eval_samples)
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"GLUE data directory {data_dir} does not exist. Pass the folder that holds one sub-folder per task "
            f"(e.g. {data_dir / spec.dir_names[0] / spec.train_file}), or load from the Hub with "
            "load_glue_from_hub / --dataset_name glue."
        )
    folder = task_dir(data_dir, spec)
    features = _features(spec)
    files = {"train": spec.train_file, **spec.dev_files}
    missing = [str(folder / name) for name in files.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Missing {spec.name} file(s): {', '.join(missing)}.")

    splits: dict[str, datasets.Dataset] = {}
    for split, name in files.items():
        ds = datasets.Dataset.from_dict(_read_tsv(spec, folder / name), features=features)
        limit = max_train_samples if split == "train" else max_eval_samples
        splits[split] = _subsample(ds, limit, seed)
    if "validation" not in splits:
        splits["validation"] = splits["validation_matched"]
    order = ["train", "validation", *(s for s in splits if s not in ("train", "validation"))]
    return datasets.DatasetDict({split: splits[split] for split in order})


def load_glue_from_hub(
    task: str,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    **load_kwargs: Any,
) -> datasets.DatasetDict:
    """Load one GLUE task from the Hugging Face Hub (``nyu-mll/glue``, what ``load_dataset("glue", task)`` means).

    Needs network access (or a warm ``datasets`` cache); recipes call it only for ``--dataset_name glue``. For
    MNLI a ``validation`` split (= ``validation_matched``) is added so recipes can use one split name. Subsampling
    works as in :func:`load_glue` and applies to ``train`` and every ``validation*`` split; test splits (unlabeled,
    ``label == -1``) are kept as downloaded. Extra keyword arguments go to ``datasets.load_dataset``.
    """
    spec = TASKS[normalize_task(task)]
    _check_max("max_train_samples", max_train_samples)
    _check_max("max_eval_samples", max_eval_samples)
    raw = datasets.load_dataset(HUB_GLUE_DATASET, spec.name, **load_kwargs)
    splits: dict[str, datasets.Dataset] = {}
    for split, ds in raw.items():
        if split == "train":
            ds = _subsample(ds, max_train_samples, seed)
        elif split.startswith("validation"):
            ds = _subsample(ds, max_eval_samples, seed)
        splits[split] = ds
    if "validation" not in splits and "validation_matched" in splits:
        splits["validation"] = splits["validation_matched"]
    return datasets.DatasetDict(splits)
