# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental task splits: which original classes arrive in which task, in a recorded, reproducible order.

A split is fully described by its class order and its tasks (lists of *original* class ids, concatenating to the
class order). ``to_dict()`` / ``from_dict()`` round-trip it through JSON so that the exact order, the split and the
seed that produced them are stored next to the metrics of a run.

Classifiers in class-incremental learning usually grow their output layer task by task, so they work in the
*incremental* label space: a class's label is its position in the class order (task 0's classes are ``0..k-1``,
task 1's follow, ...). :func:`to_incremental_labels` / :func:`to_original_labels` map between the two spaces.

Task sizes follow LAMDA-PILOT's ``DataManager`` when ``init_cls`` / ``increment`` are given: a first task of
``init_cls`` classes, then tasks of ``increment`` classes, and a final smaller task with any remainder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ClassIncrementalSplit",
    "make_class_incremental_split",
    "to_incremental_labels",
    "to_original_labels",
]


def as_int_list(values: Sequence[Any], what: str) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{what} must hold integer class ids, got {v!r} ({type(v).__name__}).")
        out.append(int(v))
    return out


def _check_permutation(order: Sequence[int], num_classes: int, what: str) -> None:
    if len(order) != num_classes or sorted(order) != list(range(num_classes)):
        bad = sorted({c for c in order if not 0 <= c < num_classes})
        counts: dict[int, int] = {}
        for c in order:
            counts[c] = counts.get(c, 0) + 1
        repeated = sorted(c for c, n in counts.items() if n > 1)
        missing = sorted(set(range(num_classes)) - set(order))
        details = []
        if bad:
            details.append(f"out of range [0, {num_classes}): {bad}")
        if repeated:
            details.append(f"repeated: {repeated}")
        if missing:
            details.append(f"missing: {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        raise ValueError(
            f"{what} must be a permutation of the {num_classes} class ids 0..{num_classes - 1} "
            f"(each class exactly once); {'; '.join(details) or f'got length {len(order)}'}."
        )


@dataclass(frozen=True)
class ClassIncrementalSplit:
    """An ordered partition of ``num_classes`` classes into tasks.

    ``tasks[t]`` holds the original class ids learnt at step ``t``; ``class_order`` is their concatenation.
    ``seed`` records how the order was drawn (``None``: natural or user-given order); ``class_names`` is optional.
    The constructor validates everything, so an instance (also one rebuilt by ``from_dict``) is always consistent.
    """

    num_classes: int
    class_order: tuple[int, ...]
    tasks: tuple[tuple[int, ...], ...]
    seed: int | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # Normalise to tuples of Python ints so that equality, hashing and JSON output behave.
        object.__setattr__(self, "class_order", tuple(as_int_list(self.class_order, "class_order")))
        object.__setattr__(self, "tasks", tuple(tuple(as_int_list(t, f"task {i}")) for i, t in enumerate(self.tasks)))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        if not isinstance(self.num_classes, (int, np.integer)) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}.")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        _check_permutation(self.class_order, self.num_classes, "class_order")
        _validate_tasks(self.tasks, self.num_classes)
        concat = tuple(c for task in self.tasks for c in task)
        if concat != self.class_order:
            raise ValueError(
                "The tasks must concatenate to class_order (incremental labels are positions in class_order); "
                f"got tasks {[list(t) for t in self.tasks]} for class_order {list(self.class_order)}."
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"Got {len(self.class_names)} class_names for num_classes={self.num_classes}.")

    # -- shape -------------------------------------------------------------------------------------------------

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_sizes(self) -> list[int]:
        return [len(t) for t in self.tasks]

    def _check_task(self, t: int) -> int:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_tasks:
            raise ValueError(
                f"Task id {t!r} is out of range: this split has {self.num_tasks} tasks (0..{self.num_tasks - 1})."
            )
        return int(t)

    def classes_of_task(self, t: int) -> list[int]:
        """Original class ids learnt at step ``t``."""
        return list(self.tasks[self._check_task(t)])

    def classes_seen_until(self, t: int) -> list[int]:
        """Original class ids of tasks ``0..t`` (inclusive), in class order."""
        t = self._check_task(t)
        return [c for task in self.tasks[: t + 1] for c in task]

    def num_classes_seen_until(self, t: int) -> int:
        """Width of the classifier after step ``t`` (incremental labels ``0..n-1``)."""
        t = self._check_task(t)
        return sum(len(task) for task in self.tasks[: t + 1])

    @property
    def task_of_class(self) -> np.ndarray:
        """``task_of_class[c]`` is the task in which original class ``c`` is learnt (int64 array)."""
        out = np.empty(self.num_classes, dtype=np.int64)
        for t, task in enumerate(self.tasks):
            out[list(task)] = t
        return out

    def task_of_labels(self, labels: Any, incremental: bool = False) -> np.ndarray:
        """Task id of each label (original labels, or incremental ones with ``incremental=True``)."""
        if incremental:
            labels = self.to_original_labels(labels)
        labels = _check_labels(labels, self.num_classes, "labels")
        return self.task_of_class[labels]

    # -- label spaces ------------------------------------------------------------------------------------------

    def to_incremental_labels(self, labels: Any) -> np.ndarray:
        """Original class ids -> positions in the class order (the labels a growing classifier uses)."""
        return to_incremental_labels(labels, self.class_order)

    def to_original_labels(self, labels: Any) -> np.ndarray:
        """Incremental labels (positions in the class order) -> original class ids."""
        return to_original_labels(labels, self.class_order)

    # -- serialisation -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; ``from_dict`` rebuilds an equal split from it."""
        return {
            "num_classes": self.num_classes,
            "num_tasks": self.num_tasks,
            "seed": self.seed,
            "class_order": list(self.class_order),
            "tasks": [list(t) for t in self.tasks],
            "task_sizes": self.task_sizes,
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassIncrementalSplit:
        """Inverse of ``to_dict`` (redundant keys ``num_tasks`` / ``task_sizes`` are checked, not trusted)."""
        missing = [k for k in ("num_classes", "class_order", "tasks") if k not in d]
        if missing:
            raise ValueError(
                f"Split dict lacks keys {missing}; expected the output of ClassIncrementalSplit.to_dict()."
            )
        split = cls(
            num_classes=d["num_classes"],
            class_order=tuple(d["class_order"]),
            tasks=tuple(tuple(t) for t in d["tasks"]),
            seed=d.get("seed"),
            class_names=None if d.get("class_names") is None else tuple(d["class_names"]),
        )
        if "num_tasks" in d and d["num_tasks"] != split.num_tasks:
            raise ValueError(f"Split dict says num_tasks={d['num_tasks']} but lists {split.num_tasks} tasks.")
        if "task_sizes" in d and list(d["task_sizes"]) != split.task_sizes:
            raise ValueError(
                f"Split dict says task_sizes={d['task_sizes']} but its tasks have sizes {split.task_sizes}."
            )
        return split


def _validate_tasks(tasks: Sequence[Sequence[int]], num_classes: int) -> None:
    if len(tasks) == 0:
        raise ValueError("A split needs at least one task; got an empty list of tasks.")
    seen: dict[int, int] = {}
    for t, task in enumerate(tasks):
        if len(task) == 0:
            raise ValueError(f"Task {t} is empty; every task must hold at least one class.")
        for c in task:
            if not 0 <= c < num_classes:
                raise ValueError(f"Task {t} holds class id {c}, outside [0, {num_classes}).")
            if c in seen:
                where = "twice in task" if seen[c] == t else f"in both task {seen[c]} and task"
                raise ValueError(f"Class {c} appears {where} {t}; each class must belong to exactly one task.")
            seen[c] = t
    missing = sorted(set(range(num_classes)) - set(seen))
    if missing:
        raise ValueError(
            f"Classes {missing[:20]}{' ...' if len(missing) > 20 else ''} belong to no task; the tasks must cover all "
            f"{num_classes} classes."
        )


def _check_labels(labels: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what} must be integers, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = arr[(arr < 0) | (arr >= n)]
        raise ValueError(f"{what} hold values outside [0, {n}), e.g. {bad[:5].tolist()}.")
    return arr


def to_incremental_labels(labels: Any, class_order: Sequence[int]) -> np.ndarray:
    """Map original class ids to their position in ``class_order`` (int64 array, same shape as ``labels``)."""
    order = np.asarray(class_order, dtype=np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse[_check_labels(labels, len(order), "Original labels")]


def to_original_labels(labels: Any, class_order: Sequence[int]) -> np.ndarray:
    """Map incremental labels (positions in ``class_order``) back to original class ids."""
    order = np.asarray(class_order, dtype=np.int64)
    return order[_check_labels(labels, len(order), "Incremental labels")]


def _pilot_sizes(num_classes: int, init_cls: int, increment: int) -> list[int]:
    # LAMDA-PILOT DataManager: [init_cls] + [increment]*k while it fits, then the remainder as a last task.
    sizes = [init_cls]
    while sum(sizes) + increment < num_classes:
        sizes.append(increment)
    offset = num_classes - sum(sizes)
    if offset > 0:
        sizes.append(offset)
    return sizes


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _classes(class_names_or_num_classes: int | Sequence[str]) -> tuple[int, tuple[str, ...] | None]:
    """(number of classes, class names or None) of the first argument of :func:`make_class_incremental_split`."""
    if isinstance(class_names_or_num_classes, (int, np.integer)) and not isinstance(class_names_or_num_classes, bool):
        num_classes = int(class_names_or_num_classes)
        class_names = None
        if num_classes < 1:
            raise ValueError(f"The number of classes must be positive, got {num_classes}.")
    elif isinstance(class_names_or_num_classes, str):
        raise ValueError("Pass a list of class names or a number of classes, not a single string.")
    else:
        class_names = tuple(str(n) for n in class_names_or_num_classes)
        num_classes = len(class_names)
        if num_classes == 0:
            raise ValueError("Got an empty list of class names.")
        if len(set(class_names)) != num_classes:
            dup = sorted({n for n in class_names if class_names.count(n) > 1})
            raise ValueError(f"Class names must be unique; repeated: {dup}.")
    return num_classes, class_names


def _task_sizes(num_classes: int, num_tasks: int | None, init_cls: int | None, increment: int | None) -> list[int]:
    """Task sizes from ``init_cls`` / ``increment`` (LAMDA-PILOT) or ``num_tasks`` equal tasks (see the caller)."""
    if init_cls is not None or increment is not None:
        if increment is not None:
            increment = _positive_int(increment, "increment")
        if init_cls is not None:
            init_cls = _positive_int(init_cls, "init_cls")
        if init_cls is None:
            init_cls = increment
        if init_cls is not None and init_cls > num_classes:
            raise ValueError(f"init_cls={init_cls} is more than the {num_classes} classes.")
        if increment is None:
            if num_tasks is None:
                raise ValueError("init_cls without increment needs num_tasks (the rest is split equally).")
            rest = num_classes - init_cls
            if num_tasks == 1:
                if rest:
                    raise ValueError(f"num_tasks=1 needs init_cls={num_classes} (all classes), got {init_cls}.")
                sizes = [init_cls]
            elif rest < num_tasks - 1 or rest % (num_tasks - 1):
                raise ValueError(
                    f"After init_cls={init_cls}, the remaining {rest} classes cannot be split into {num_tasks - 1} "
                    "equal tasks; pass increment= as well (the last task then takes the remainder)."
                )
            else:
                sizes = [init_cls] + [rest // (num_tasks - 1)] * (num_tasks - 1)
        else:
            sizes = _pilot_sizes(num_classes, init_cls, increment)
            if num_tasks is not None and num_tasks != len(sizes):
                raise ValueError(
                    f"init_cls={init_cls}, increment={increment} on {num_classes} classes gives {len(sizes)} tasks "
                    f"(sizes {sizes}), not num_tasks={num_tasks}; drop num_tasks or change init_cls/increment."
                )
    else:
        if num_tasks is None:
            raise ValueError("Give num_tasks (equal tasks), init_cls/increment, or explicit tasks=.")
        if num_classes % num_tasks:
            raise ValueError(
                f"{num_classes} classes cannot be split into {num_tasks} equal tasks; pick a num_tasks that divides "
                f"{num_classes}, or pass init_cls= and increment= (LAMDA-PILOT style, the last task takes the "
                "remainder), or explicit tasks=."
            )
        sizes = [num_classes // num_tasks] * num_tasks

    return sizes


def make_class_incremental_split(
    class_names_or_num_classes: int | Sequence[str],
    num_tasks: int | None = None,
    seed: int | None = 0,
    class_order: Sequence[int] | None = None,
    init_cls: int | None = None,
    increment: int | None = None,
    tasks: Sequence[Sequence[int]] | None = None,
) -> ClassIncrementalSplit:
    """Build a class-incremental split.

    Class order: ``class_order`` if given, else ``np.random.default_rng(seed).permutation(num_classes)``, else (seed
    ``None``) the natural order ``0..num_classes-1``. A split built from a given ``class_order`` or ``tasks`` records
    ``seed=None`` (its order was not drawn). Task sizes, in order of precedence:

    - ``tasks``: explicit lists of original class ids (their concatenation becomes the class order; ``seed`` and
      ``init_cls`` / ``increment`` must then be left out or agree);
    - ``init_cls`` / ``increment`` (LAMDA-PILOT): first task ``init_cls`` classes, then ``increment`` each, the rest
      in a last smaller task. ``increment`` alone means ``init_cls = increment``; ``init_cls`` alone splits the rest
      equally over ``num_tasks - 1`` tasks. ``num_tasks``, if given, must match the resulting count;
    - otherwise ``num_tasks`` equal tasks (``num_classes`` must be divisible by ``num_tasks``).
    """
    num_classes, class_names = _classes(class_names_or_num_classes)
    if num_tasks is not None:
        num_tasks = _positive_int(num_tasks, "num_tasks")
        if num_tasks > num_classes:
            raise ValueError(
                f"num_tasks={num_tasks} is more than the {num_classes} classes; each task needs at least one class, "
                f"so use num_tasks <= {num_classes}."
            )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"seed must be an integer or None, got {seed!r}.")
    seed = None if seed is None else int(seed)

    if tasks is not None:
        if init_cls is not None or increment is not None:
            raise ValueError("Give either explicit tasks= or init_cls/increment, not both.")
        task_lists = [as_int_list(t, f"task {i}") for i, t in enumerate(tasks)]
        _validate_tasks(task_lists, num_classes)
        if num_tasks is not None and num_tasks != len(task_lists):
            raise ValueError(f"num_tasks={num_tasks} but {len(task_lists)} explicit tasks were given.")
        order = [c for t in task_lists for c in t]
        if class_order is not None and as_int_list(class_order, "class_order") != order:
            raise ValueError("class_order must equal the concatenation of the explicit tasks (or be left out).")
        # The order came from the user, not from a seed: record no seed so that nobody believes it was drawn.
        return ClassIncrementalSplit(num_classes, tuple(order), tuple(map(tuple, task_lists)), None, class_names)

    if class_order is not None:
        order = as_int_list(class_order, "class_order")
        _check_permutation(order, num_classes, "class_order")
        seed = None  # the order is given, not drawn
    elif seed is None:
        order = list(range(num_classes))
    else:
        order = np.random.default_rng(seed).permutation(num_classes).tolist()

    sizes = _task_sizes(num_classes, num_tasks, init_cls, increment)
    task_lists, start = [], 0
    for size in sizes:
        task_lists.append(tuple(order[start : start + size]))
        start += size
    return ClassIncrementalSplit(num_classes, tuple(order), tuple(task_lists), seed, class_names)
