# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""The data of a class-incremental run: a :class:`TaskStream` (samples, incremental labels, split, collate),
builders for image and text streams, and the loaders that batch a stream's rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .splits import ClassIncrementalSplit

__all__ = ["TaskStream", "TextCollate", "image_stream", "make_loader", "text_stream"]


@dataclass
class TaskStream:
    """The data of a class-incremental run: samples, *incremental* labels, the split, and batching.

    `train[i]` / `test[i]` return `(x, anything)`; only `x` is used (labels come from the label arrays).
    `collate(list_of_x)` builds the model inputs, e.g. `{"pixel_values": ...}` or tokenised text.
    """

    split: ClassIncrementalSplit
    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]

    def __post_init__(self) -> None:
        for which in ("train", "test"):
            labels = np.asarray(getattr(self, f"{which}_labels"), dtype=np.int64)
            setattr(self, f"{which}_labels", labels)
            if len(labels) != len(getattr(self, which)):
                raise ValueError(f"{which}_labels has {len(labels)} entries for {len(getattr(self, which))} samples.")
            tasks = self.split.task_of_labels(labels, incremental=True)
            empty = [t for t in range(self.split.num_tasks) if not np.any(tasks == t)]
            if empty:
                raise ValueError(f"Task(s) {empty} have no {which} samples; every task needs data in both splits.")

    @property
    def num_tasks(self) -> int:
        return self.split.num_tasks

    def task_classes(self, t: int) -> list[int]:
        """Incremental labels of task `t`'s classes."""
        start = self.split.num_classes_seen_until(t) - len(self.split.classes_of_task(t))
        return list(range(start, start + len(self.split.classes_of_task(t))))

    def labels(self, which: str) -> np.ndarray:
        return self.train_labels if which == "train" else self.test_labels

    def task_of(self, which: str) -> np.ndarray:
        return self.split.task_of_labels(self.labels(which), incremental=True)

    def indices(self, which: str, t: int, seen: bool = False) -> np.ndarray:
        """Rows of task `t` (or, with `seen=True`, of tasks `0..t`) in `which` ("train"/"test")."""
        tasks = self.task_of(which)
        return np.flatnonzero(tasks <= t if seen else tasks == t)


class Rows(Dataset):
    """The samples `rows` of `data`, each returned as `(row, x)` (so a batch knows which rows it holds)."""

    def __init__(self, data: Dataset, rows: np.ndarray) -> None:
        self.data, self.rows = data, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        row = int(self.rows[i])
        return row, self.data[row][0]


class RowCollate:
    """Collate `(row, x)` items into `(rows tensor, model inputs)` with the stream's own `collate`."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, torch.Tensor]]) -> None:
        self.collate = collate

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return torch.tensor([r for r, _ in items], dtype=torch.long), self.collate([x for _, x in items])


def make_loader(
    stream: TaskStream,
    which: str,
    rows: np.ndarray,
    batch_size: int,
    num_workers: int,
    generator: Optional[torch.Generator] = None,
) -> DataLoader:
    """Batches `(rows, inputs)` of `rows` of `which` ("train"/"test"), shuffled with `generator` if one is given."""
    return DataLoader(
        Rows(getattr(stream, which), rows),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        num_workers=num_workers,
        collate_fn=RowCollate(stream.collate),
    )


def stack_pixels(xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate image tensors into `{"pixel_values": (batch, 3, H, W)}`."""
    return {"pixel_values": torch.stack(xs)}


def image_stream(split: ClassIncrementalSplit, train: Any, test: Any, transform: Callable[[Any], Any]) -> TaskStream:
    """A stream over two `ImageSource`s (original labels are mapped to the split's incremental labels)."""
    from .data import ImageClassificationDataset

    return TaskStream(
        split=split,
        train=ImageClassificationDataset(train, transform=transform),
        test=ImageClassificationDataset(test, transform=transform),
        train_labels=split.to_incremental_labels(train.labels),
        test_labels=split.to_incremental_labels(test.labels),
        collate=stack_pixels,
    )


class TextData(Dataset):
    """A list of strings as a dataset of `(text, None)`."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, None]:
        return self.texts[i], None


class TextCollate:
    """Tokenise a list of strings (padding to the longest, truncating at `max_length`)."""

    def __init__(self, tokenizer: Any, max_length: int = 64) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return dict(enc)


def text_stream(
    split: ClassIncrementalSplit, train: Any, test: Any, tokenizer: Any, max_length: int = 64
) -> TaskStream:
    """A stream over two `TextSource`s (e.g. CLINC150's train and test)."""
    return TaskStream(
        split=split,
        train=TextData(train.texts),
        test=TextData(test.texts),
        train_labels=split.to_incremental_labels(train.labels),
        test_labels=split.to_incremental_labels(test.labels),
        collate=TextCollate(tokenizer, max_length),
    )
