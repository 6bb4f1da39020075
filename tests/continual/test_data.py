# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Data loading: the shared CIFAR-10 folder and CLINC150 file, a fake CIFAR-100 pickle folder, and error paths."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lntune.continual.data import (
    ImageClassificationDataset,
    ImageSource,
    holdout_per_class,
    load_clinc150,
    load_image_folder,
    subsample_per_class,
    vit_transform,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CIFAR10 = SHARED / "cifar10"
CLINC = SHARED / "clinc150" / "data_full.json"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")


def _write_jpg(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


# -- the shared CIFAR-10 folder ------------------------------------------------------------------------------------


def test_cifar10_listing() -> None:
    _needs(CIFAR10)
    for split in ("train", "test"):
        src = load_image_folder(CIFAR10, split)
        assert len(src) == 10_000 and src.images is None
        assert src.class_names == CIFAR10_CLASSES
        np.testing.assert_array_equal(np.bincount(src.labels), [1000] * 10)
        assert Path(src.paths[0]).parts[-2:] == ("airplane", "0000.jpg")
        assert Path(src.paths[-1]).parts[-2:] == ("truck", "0999.jpg")


def test_cifar10_subsample_is_deterministic() -> None:
    _needs(CIFAR10)
    a = load_image_folder(CIFAR10, "test", max_per_class=7, seed=1)
    b = load_image_folder(CIFAR10, "test", max_per_class=7, seed=1)
    c = load_image_folder(CIFAR10, "test", max_per_class=7, seed=2)
    assert len(a) == 70 and a.paths == b.paths and a.paths != c.paths
    np.testing.assert_array_equal(np.bincount(a.labels), [7] * 10)
    assert list(a.paths) == sorted(a.paths)  # dataset order kept


def test_cifar10_decode_one_image() -> None:
    _needs(CIFAR10)
    src = load_image_folder(CIFAR10, "test", max_per_class=1)
    ds = ImageClassificationDataset(src, indices=[3], target_transform=lambda y: y + 100)
    x, y = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0  # mean = std = 0.5
    assert y == 103 and len(ds) == 1 and ds.labels.tolist() == [3]


# -- the shared CLINC150 file --------------------------------------------------------------------------------------


def test_clinc150_counts() -> None:
    _needs(CLINC)
    d = load_clinc150(CLINC)
    assert (len(d.train), len(d.val), len(d.test)) == (15_000, 3_000, 4_500)
    assert len(d.intent_names) == 150 and list(d.intent_names) == sorted(d.intent_names)
    assert "oos" not in d.intent_names
    for part, n in ((d.train, 100), (d.val, 20), (d.test, 30)):
        np.testing.assert_array_equal(np.bincount(part.labels, minlength=150), [n] * 150)
        assert part.class_names == d.intent_names and isinstance(part.texts[0], str)
    small = load_clinc150(CLINC.parent, max_per_class=3, seed=5)  # a folder works too
    assert (len(small.train), len(small.val), len(small.test)) == (450, 450, 450)
    assert load_clinc150(CLINC, max_per_class=3, seed=5).train.texts == small.train.texts


# -- a fake CIFAR-100 python folder --------------------------------------------------------------------------------


def _fake_cifar100(root: Path, n: int = 12) -> np.ndarray:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [i % 3 for i in range(n)]
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [0] * n}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [b"apple", b"bear", b"cloud"]}, f)
    return data


def test_cifar100_pickles(tmp_path: Path) -> None:
    data = _fake_cifar100(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        src = load_image_folder(root, "train")
        assert src.paths is None and src.images.shape == (12, 32, 32, 3) and src.images.dtype == np.uint8
        assert src.class_names == ("apple", "bear", "cloud")
        np.testing.assert_array_equal(src.labels, [i % 3 for i in range(12)])
    # Channel-major rows: pixel (0, 0) of image 0 is (R, G, B) = data[0][0], data[0][1024], data[0][2048].
    np.testing.assert_array_equal(src.images[0, 0, 0], data[0, [0, 1024, 2048]])
    sub = load_image_folder(tmp_path, "test", max_per_class=2, seed=0)
    np.testing.assert_array_equal(np.bincount(sub.labels), [2, 2, 2])
    x, y = ImageClassificationDataset(sub, transform=vit_transform(image_size=48))[0]
    assert x.shape == (3, 48, 48) and y == int(sub.labels[0])
    with pytest.raises(ValueError, match="Unknown split 'val'"):
        load_image_folder(tmp_path, "val")
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match="meta"):
        load_image_folder(tmp_path, "train")


# -- error paths and small folders ---------------------------------------------------------------------------------


def test_small_image_folder_and_indices(tmp_path: Path) -> None:
    for split in ("train", "test"):
        for c, name in enumerate(["b_cls", "a_cls"]):
            for k in range(3):
                _write_jpg(tmp_path / split / name / f"{k}.png", 40 * c)
    (tmp_path / "train" / "a_cls" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    src = load_image_folder(tmp_path, "train")
    assert src.class_names == ("a_cls", "b_cls") and len(src) == 6
    np.testing.assert_array_equal(src.indices_of_classes([1]), [3, 4, 5])
    img = src.load_image(0)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing_root"):
        load_image_folder(tmp_path / "missing_root", "train")
    with pytest.raises(FileNotFoundError, match=r"no train/ or test/ folder.*\{train,test\}/<class_name>"):
        load_image_folder(tmp_path, "train")
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        load_image_folder(tmp_path, "dev")

    _write_jpg(tmp_path / "train" / "cat" / "0.jpg")
    with pytest.raises(FileNotFoundError, match=r"test does not exist.*'train/'"):
        load_image_folder(tmp_path, "test")

    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match=r"1 class folder\(s\).*train/dog"):
        load_image_folder(tmp_path, "train")

    (tmp_path / "test").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no class folders"):
        load_image_folder(tmp_path, "test")

    (tmp_path / "test" / "cat").mkdir()
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match="No images .* in any class folder"):
        load_image_folder(tmp_path, "test")

    (tmp_path / "test" / "eel").mkdir()
    with pytest.raises(ValueError, match=r"different class folders \(only in test: \['eel'\]"):
        load_image_folder(tmp_path, "test")


def test_subsample_and_source_validation() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(subsample_per_class(labels, None), np.arange(6))
    keep = subsample_per_class(labels, 1, seed=0)
    assert sorted(labels[keep].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="max_per_class"):
        subsample_per_class(labels, 0)
    with pytest.raises(ValueError, match="exactly one"):
        ImageSource(labels=np.zeros(1), class_names=("a",))
    with pytest.raises(ValueError, match="indices must lie"):
        ImageClassificationDataset(ImageSource(labels=[0], class_names=("a",), paths=["x.jpg"]), indices=[1])


def test_holdout_per_class_splits_every_class() -> None:
    labels = np.repeat(np.arange(4), [5, 3, 7, 2])
    kept, held = holdout_per_class(labels, 1, seed=3)
    assert np.intersect1d(kept, held).size == 0 and np.union1d(kept, held).tolist() == list(range(len(labels)))
    np.testing.assert_array_equal(np.bincount(labels[held]), [1, 1, 1, 1])
    np.testing.assert_array_equal(np.bincount(labels[kept]), [4, 2, 6, 1])
    again, held_again = holdout_per_class(labels, 1, seed=3)
    np.testing.assert_array_equal(held, held_again)
    assert any(not np.array_equal(held, holdout_per_class(labels, 1, seed=s)[1]) for s in range(4, 10))
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] have 2 or fewer training samples"):
        holdout_per_class(labels, 2)
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        holdout_per_class(labels, 0)


def test_clinc_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_clinc150(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(ValueError, match=r"lacks the keys \['test'\]"):
        load_clinc150(bad)
    bad.write_text(json.dumps({"train": [["hi", "greet"], ["x", "oos"]], "val": [["yo", "bye"]], "test": []}))
    with pytest.raises(ValueError, match=r"val has intents absent from train: \['bye'\]"):
        load_clinc150(bad)
    bad.write_text(json.dumps({"train": [["hi", "greet"], ["x", "oos"]], "val": [], "test": [["hey", "greet"]]}))
    d = load_clinc150(bad)
    assert d.intent_names == ("greet",) and d.train.texts == ["hi"] and d.test.labels.tolist() == [0]
