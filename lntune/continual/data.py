# Copyright 2026 the lntune authors. Licensed under the Apache License, Version 2.0.
"""Data loading for class-incremental benchmarks: image folders, CIFAR-100 pickles and CLINC150.

Listing is cheap and separate from decoding: :func:`load_image_folder` returns an :class:`ImageSource` holding file
paths (ImageFolder layout) or an in-memory uint8 array (torchvision's ``cifar-100-python`` pickles) plus integer
labels and class names, without opening a single image. :class:`ImageClassificationDataset` decodes lazily, one
sample at a time, with PIL. Labels are the *original* class ids (sorted class names, as torchvision's ImageFolder
assigns them); map them to a split's incremental labels with ``target_transform``.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMG_EXTENSIONS",
    "ImageClassificationDataset",
    "ImageSource",
    "TextSource",
    "TextSplits",
    "holdout_per_class",
    "load_clinc150",
    "load_image_folder",
    "subsample_per_class",
    "vit_transform",
]

# Same set as torchvision.datasets.folder.IMG_EXTENSIONS (matched case-insensitively).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_SPLITS = ("train", "val", "test")
_CIFAR100_DIR = "cifar-100-python"
_FOLDER_LAYOUT = "<root>/{train,test}/<class_name>/<image file>"


@dataclass(frozen=True, eq=False)
class ImageSource:
    """A listed (not decoded) image split: either ``paths`` or ``images`` (N x H x W x 3 uint8), plus labels."""

    labels: np.ndarray
    class_names: tuple[str, ...]
    paths: tuple[str, ...] | None = None
    images: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if (self.paths is None) == (self.images is None):
            raise ValueError("An ImageSource holds exactly one of paths= or images=.")
        if self.paths is not None:
            object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        n = len(self.paths) if self.paths is not None else len(self.images)
        if self.labels.shape != (n,):
            raise ValueError(f"Got {n} images but labels of shape {self.labels.shape}.")
        if self.images is not None and (self.images.ndim != 4 or self.images.shape[-1] != 3):
            raise ValueError(f"images must be an N x H x W x 3 array, got shape {self.images.shape}.")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}) (one per class name).")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_image(self, i: int) -> Image.Image:
        """Decode sample ``i`` as an RGB PIL image."""
        if self.paths is not None:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB")
        return Image.fromarray(np.ascontiguousarray(self.images[i]))

    def indices_of_classes(self, class_ids: Sequence[int]) -> np.ndarray:
        """Sample indices whose label is in ``class_ids`` (e.g. one task's classes), in dataset order."""
        return np.flatnonzero(np.isin(self.labels, np.asarray(list(class_ids), dtype=np.int64)))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSource:
        """A new source holding only ``indices`` (same class names)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSource(
            labels=self.labels[idx],
            class_names=self.class_names,
            paths=None if self.paths is None else tuple(self.paths[i] for i in idx),
            images=None if self.images is None else self.images[idx],
        )


def subsample_per_class(labels: np.ndarray, max_per_class: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` samples of each class, drawn with ``default_rng(seed)``.

    Classes are visited in increasing id order with one generator, so the result depends only on the labels,
    ``max_per_class`` and ``seed``.
    """
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, (int, np.integer)) or max_per_class < 1:
        raise ValueError(f"max_per_class must be a positive integer or None, got {max_per_class!r}.")
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > max_per_class:
            idx = rng.choice(idx, size=max_per_class, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


def holdout_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split a training set into `(kept, held_out)` sorted indices: `per_class` seeded samples of every class are
    held out (a validation set carved from the training data, for choosing settings without the test set), the rest
    is kept. Raises if a class would keep no training sample."""
    labels = np.asarray(labels)
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}.")
    classes, counts = np.unique(labels, return_counts=True)
    short = [int(c) for c, n in zip(classes, counts) if n <= per_class]
    if short:
        raise ValueError(
            f"Cannot hold out {per_class} samples per class: class(es) {short[:10]} have {int(counts.min())} or "
            "fewer training samples and would keep none; lower the held-out count."
        )
    held = subsample_per_class(labels, per_class, seed)
    return np.setdiff1d(np.arange(len(labels)), held), held


def _check_split(split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise ValueError(f"Unknown split {split!r}; use one of {list(allowed)}.")


def _class_dirs(split_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, ...) are not classes.
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _list_images(class_dir: Path) -> list[str]:
    # Recursive and sorted like torchvision's ImageFolder (make_dataset), so indices match it.
    out = []
    for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
        for fname in sorted(fnames):
            if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith("."):
                out.append(os.path.join(dirpath, fname))
    return out


def _cifar100_dir(root: Path) -> Path | None:
    if (root / _CIFAR100_DIR).is_dir():
        return root / _CIFAR100_DIR
    if root.name == _CIFAR100_DIR or all((root / f).is_file() for f in ("train", "test", "meta")):
        return root
    return None


def _unpickle(path: Path) -> dict[Any, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-100 file {path} does not exist; expected {path.parent}/{{train,test,meta}} "
            "(torchvision's cifar-100-python layout)."
        )
    # The official CIFAR pickles; like torchvision, this trusts the file (pickle can run code: use trusted data only).
    with open(path, "rb") as f:
        obj = pickle.load(f, encoding="bytes")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a CIFAR pickle dict (got {type(obj).__name__}).")
    return obj


def _get(d: dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise ValueError(f"{path} lacks the key {key!r} of the CIFAR-100 python format (found {sorted(map(str, d))}).")


def _load_cifar100(folder: Path, split: str) -> ImageSource:
    _check_split(split, ("train", "test"))
    data_path, meta_path = folder / split, folder / "meta"
    d, meta = _unpickle(data_path), _unpickle(meta_path)
    data = np.asarray(_get(d, "data", data_path), dtype=np.uint8)
    labels = np.asarray(_get(d, "fine_labels", data_path), dtype=np.int64)
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "fine_label_names", meta_path)]
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise ValueError(
            f"{data_path}: expected data of shape (N, 3072) and N fine_labels, got {data.shape} and {len(labels)}."
        )
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ImageSource(labels=labels, class_names=tuple(names), images=images)


def _load_folder(root: Path, split: str) -> ImageSource:
    _check_split(split, IMAGE_SPLITS)
    present = [s for s in IMAGE_SPLITS if (root / s).is_dir()]
    if not present:
        raise FileNotFoundError(
            f"{root} has no train/ or test/ folder; expected the ImageFolder layout {_FOLDER_LAYOUT} "
            f"(or a {_CIFAR100_DIR}/ folder with the CIFAR-100 python pickles)."
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"Split folder {split_dir} does not exist (found {[s + '/' for s in present]}); expected {_FOLDER_LAYOUT}."
        )
    classes = _class_dirs(split_dir)
    if not classes:
        raise FileNotFoundError(
            f"{split_dir} holds no class folders; expected {_FOLDER_LAYOUT} (one sub-folder per class)."
        )
    # Labels come from sorted folder names per split: a class missing from one split would shift every later label.
    for other in present:
        if other != split:
            other_classes = _class_dirs(root / other)
            if other_classes != classes:
                only_here = sorted(set(classes) - set(other_classes))
                only_there = sorted(set(other_classes) - set(classes))
                raise ValueError(
                    f"{split_dir} and {root / other} hold different class folders (only in {split}: {only_here}; "
                    f"only in {other}: {only_there}); labels would not match between splits."
                )
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for c, name in enumerate(classes):
        files = _list_images(split_dir / name)
        if not files:
            empty.append(str(split_dir / name))
        paths.extend(files)
        labels.extend([c] * len(files))
    if empty:
        what = "any class folder" if len(empty) == len(classes) else f"{len(empty)} class folder(s)"
        raise FileNotFoundError(
            f"No images (extensions {', '.join(IMG_EXTENSIONS)}) in {what} of {split_dir}: {empty[:10]}"
            f"{' ...' if len(empty) > 10 else ''}."
        )
    return ImageSource(labels=np.asarray(labels, dtype=np.int64), class_names=tuple(classes), paths=tuple(paths))


def load_image_folder(
    root: str | os.PathLike[str], split: str, max_per_class: int | None = None, seed: int = 0
) -> ImageSource:
    """List one split of an image dataset without decoding it.

    ``root`` is either an ImageFolder root (``root/{train,test}/<class>/<image>``, classes = sorted folder names)
    or a folder holding torchvision's ``cifar-100-python/{train,test,meta}`` pickles (or that folder itself), which
    is read into memory as uint8. ``max_per_class`` keeps a seeded random subset of each class (order preserved).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"Dataset root {root} does not exist.")
    if not root.is_dir():
        raise NotADirectoryError(f"Dataset root {root} is not a folder; expected {_FOLDER_LAYOUT}.")
    _check_split(split, IMAGE_SPLITS)
    cifar = _cifar100_dir(root)
    source = _load_cifar100(cifar, split) if cifar is not None else _load_folder(root, split)
    if max_per_class is not None:
        source = source.subset(subsample_per_class(source.labels, max_per_class, seed))
    return source


def vit_transform(
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize to ``image_size`` x ``image_size`` (bicubic), scale to [0, 1], normalize.

    The defaults (mean = std = 0.5) are the right ones for the shipped ViT-Tiny (Google AugReg weights); ImageNet
    mean/std loses several points with it (see the shared data README).
    """
    try:
        from torchvision import transforms
    except ImportError as e:  # torchvision is a dev extra, not a core dependency
        raise ImportError("vit_transform needs torchvision: pip install 'lntune[dev]' (or torchvision).") from e
    return transforms.Compose(
        [
            transforms.Resize((image_size, image_size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ImageClassificationDataset(torch.utils.data.Dataset):
    """``(pixel_tensor, label)`` pairs over ``source[indices]``, decoded lazily with PIL.

    ``transform`` defaults to :func:`vit_transform` (224 x 224, mean = std = 0.5). ``target_transform`` maps the
    original label (e.g. ``lambda y: inc[y]`` with ``inc = split.to_incremental_labels(np.arange(n))``).
    """

    def __init__(
        self,
        source: ImageSource,
        indices: Sequence[int] | np.ndarray | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
    ) -> None:
        self.source = source
        idx = np.arange(len(source)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
            raise ValueError(f"indices must lie in [0, {len(source)}) for this source.")
        self.indices = idx
        self.transform = vit_transform() if transform is None else transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        """Original labels of the samples, without decoding anything."""
        return self.source.labels[self.indices]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        j = int(self.indices[i])
        image = self.transform(self.source.load_image(j))
        label = int(self.source.labels[j])
        return image, (label if self.target_transform is None else self.target_transform(label))


@dataclass(frozen=True, eq=False)
class TextSource:
    """One split of a text-classification dataset: texts, int labels and the (shared) class names."""

    texts: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True, eq=False)
class TextSplits:
    """Train / val / test splits sharing one label space (``intent_names[label]``)."""

    train: TextSource
    val: TextSource
    test: TextSource
    intent_names: tuple[str, ...]


def load_clinc150(
    path_to_data_full_json: str | os.PathLike[str], max_per_class: int | None = None, seed: int = 0
) -> TextSplits:
    """CLINC150 in-scope intents from ``data_full.json`` (or a folder holding it); ``oos`` is dropped.

    Intent ids are positions in the sorted intent names of the train split (150 intents; 100 / 20 / 30 utterances
    each in train / val / test). ``max_per_class`` keeps a seeded subset of each intent in every split.
    """
    path = Path(path_to_data_full_json)
    if path.is_dir():
        path = path / "data_full.json"
    if not path.is_file():
        raise FileNotFoundError(f"CLINC150 file {path} does not exist; expected clinc150/data_full.json (oos-eval).")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    missing = [k for k in ("train", "val", "test") if not isinstance(raw, dict) or k not in raw]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; expected the CLINC150 'full' JSON (train/val/test).")

    def pairs(key: str) -> list[tuple[str, str]]:
        out = []
        for k, item in enumerate(raw[key]):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise ValueError(f"{path}: {key}[{k}] is {item!r}, expected a [text, intent] pair of strings.")
            if item[1] != "oos":
                out.append((item[0], item[1]))
        return out

    data = {k: pairs(k) for k in ("train", "val", "test")}
    intents = tuple(sorted({intent for _, intent in data["train"]}))
    if not intents:
        raise ValueError(f"{path}: the train split holds no in-scope utterances.")
    ids = {name: i for i, name in enumerate(intents)}
    sources = {}
    for key, items in data.items():
        unknown = sorted({intent for _, intent in items} - ids.keys())
        if unknown:
            raise ValueError(f"{path}: {key} has intents absent from train: {unknown[:10]}.")
        texts = [t for t, _ in items]
        labels = np.asarray([ids[intent] for _, intent in items], dtype=np.int64)
        keep = subsample_per_class(labels, max_per_class, seed)
        sources[key] = TextSource(texts=[texts[i] for i in keep], labels=labels[keep], class_names=intents)
    return TextSplits(train=sources["train"], val=sources["val"], test=sources["test"], intent_names=intents)
