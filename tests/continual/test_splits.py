# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Class-incremental splits: seeded order, task sizes (equal / LAMDA-PILOT / explicit), label maps, JSON, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lntune.continual.splits import (
    ClassIncrementalSplit,
    make_class_incremental_split,
    to_incremental_labels,
    to_original_labels,
)


def test_equal_split_is_seeded_and_covers_all_classes() -> None:
    s = make_class_incremental_split(10, 5, seed=3)
    assert s.class_order == tuple(np.random.default_rng(3).permutation(10).tolist())
    assert s.task_sizes == [2] * 5
    assert sorted(c for t in s.tasks for c in t) == list(range(10))
    assert make_class_incremental_split(10, 5, seed=3) == s
    assert make_class_incremental_split(10, 5, seed=4).class_order != s.class_order
    assert s.seed == 3 and s.num_tasks == 5


def test_seed_none_keeps_natural_order_and_class_names() -> None:
    names = ["cat", "dog", "eel", "fox"]
    s = make_class_incremental_split(names, 2, seed=None)
    assert s.tasks == ((0, 1), (2, 3))
    assert s.class_names == tuple(names)
    assert s.classes_of_task(1) == [2, 3]
    assert s.classes_seen_until(0) == [0, 1]
    assert s.classes_seen_until(1) == [0, 1, 2, 3]
    assert s.num_classes_seen_until(0) == 2
    np.testing.assert_array_equal(s.task_of_class, [0, 0, 1, 1])


def test_pilot_style_sizes() -> None:
    assert make_class_incremental_split(100, seed=1993, init_cls=10, increment=10).task_sizes == [10] * 10
    assert make_class_incremental_split(100, seed=0, init_cls=50, increment=10).task_sizes == [50, 10, 10, 10, 10, 10]
    # The remainder goes to a last, smaller task, as in LAMDA-PILOT's DataManager.
    assert make_class_incremental_split(150, seed=0, init_cls=30, increment=25).task_sizes == [30, 25, 25, 25, 25, 20]
    assert make_class_incremental_split(10, seed=0, increment=4).task_sizes == [4, 4, 2]
    assert make_class_incremental_split(10, 3, seed=0, init_cls=4).task_sizes == [4, 3, 3]
    assert make_class_incremental_split(10, 3, seed=0, init_cls=4, increment=3).task_sizes == [4, 3, 3]
    with pytest.raises(ValueError, match="gives 3 tasks"):
        make_class_incremental_split(10, 4, seed=0, init_cls=4, increment=3)
    with pytest.raises(ValueError, match="pass increment="):
        make_class_incremental_split(10, 3, seed=0, init_cls=5)


def test_label_maps_round_trip() -> None:
    s = make_class_incremental_split(6, 3, class_order=[4, 2, 0, 5, 1, 3])
    assert s.seed is None  # given order, not drawn
    y = np.array([4, 3, 0, 0, 5])
    inc = s.to_incremental_labels(y)
    np.testing.assert_array_equal(inc, [0, 5, 2, 2, 3])
    np.testing.assert_array_equal(s.to_original_labels(inc), y)
    np.testing.assert_array_equal(to_original_labels(to_incremental_labels(y, s.class_order), s.class_order), y)
    np.testing.assert_array_equal(s.task_of_labels(y), [0, 2, 1, 1, 1])
    np.testing.assert_array_equal(s.task_of_labels(inc, incremental=True), [0, 2, 1, 1, 1])
    with pytest.raises(ValueError, match=r"outside \[0, 6\)"):
        s.to_incremental_labels([6])


def test_explicit_tasks_and_json_round_trip() -> None:
    s = make_class_incremental_split(5, tasks=[[3], [0, 4], [1, 2]])
    assert s.class_order == (3, 0, 4, 1, 2) and s.task_sizes == [1, 2, 2]
    d = json.loads(json.dumps(s.to_dict()))
    assert d["class_order"] == [3, 0, 4, 1, 2] and d["tasks"] == [[3], [0, 4], [1, 2]] and d["seed"] is None
    assert ClassIncrementalSplit.from_dict(d) == s
    s2 = make_class_incremental_split(["a", "b", "c", "d"], 2, seed=7)
    assert ClassIncrementalSplit.from_dict(json.loads(json.dumps(s2.to_dict()))) == s2
    d["task_sizes"] = [2, 2, 1]
    with pytest.raises(ValueError, match="task_sizes"):
        ClassIncrementalSplit.from_dict(d)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"class_names_or_num_classes": 3, "num_tasks": 4}, "num_tasks=4 is more than the 3 classes"),
        ({"class_names_or_num_classes": 10, "num_tasks": 3}, "init_cls= and increment="),
        ({"class_names_or_num_classes": 4, "tasks": [[0, 1], [1, 2, 3]]}, "Class 1 appears in both task 0 and task 1"),
        ({"class_names_or_num_classes": 4, "tasks": [[0, 1], [], [2, 3]]}, "Task 1 is empty"),
        ({"class_names_or_num_classes": 4, "tasks": [[0, 1], [2]]}, r"Classes \[3\] belong to no task"),
        ({"class_names_or_num_classes": 4, "tasks": [[0, 1], [2, 7]]}, "outside"),
        ({"class_names_or_num_classes": 4, "num_tasks": 2, "class_order": [0, 1, 1, 3]}, "repeated: \\[1\\]"),
        ({"class_names_or_num_classes": 4}, "Give num_tasks"),
        ({"class_names_or_num_classes": 0, "num_tasks": 1}, "positive"),
        ({"class_names_or_num_classes": ["a", "a"], "num_tasks": 1}, "unique"),
        ({"class_names_or_num_classes": 4, "seed": 0, "init_cls": 5, "increment": 1}, "init_cls=5 is more"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_class_incremental_split(**kwargs)


def test_task_id_out_of_range() -> None:
    s = make_class_incremental_split(4, 2, seed=0)
    for bad in (2, -1):
        with pytest.raises(ValueError, match=r"has 2 tasks \(0\.\.1\)"):
            s.classes_of_task(bad)
    with pytest.raises(ValueError, match="out of range"):
        s.classes_seen_until(5)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="concatenate"):
        ClassIncrementalSplit(num_classes=3, class_order=(0, 1, 2), tasks=((1, 0), (2,)))
