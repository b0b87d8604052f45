"""Readers for ``train``'s data: features + labels from .npz / .npy (+ a labels file), or a
folder with one sub-folder of images per identity. Problems raise CliError naming the file
(and the line, for text files).

- .npz: features under one of FEATURE_KEYS, labels under one of LABEL_KEYS.
- .npy: features (N, ...); labels from ``--labels``: a .npy (N,) or a text file with one
  label per line. Labels may be any strings or integers; classes are numbered in sorted order.
- folder: ``root/<identity>/<image>``; identities and images in sorted order. Images are
  read with Pillow (a matplotlib dependency), converted to the first image's mode (grey or
  RGB), scaled to [0, 1]; all must have one size unless ``image_size`` resizes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..scoring import ScoreFileError, load_arrays
from .common import CliError

FEATURE_KEYS = ("features", "x", "X", "data", "embeddings")
LABEL_KEYS = ("labels", "y", "targets")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff",
                  ".webp")


@dataclass
class TrainData:
    features: np.ndarray  # (N, ...) float32
    labels: np.ndarray  # (N,) int64 in [0, C)
    classes: list[str]  # the original label of class k
    names: list[str]  # one name per sample: the image path, or the row index


def _check_features(x: np.ndarray, path) -> np.ndarray:
    if x.ndim < 2 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.number):
        raise CliError(f"{path}: features must be a numeric array (N, D) with N >= 1; got "
                       f"shape {x.shape}, dtype {x.dtype}")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise CliError(f"{path}: row {int(np.flatnonzero(bad)[0])} has a NaN or inf")
    return x.astype(np.float32)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npy (key "") or .npz, read now (scoring.load_arrays): a missing,
    0-byte, cut-short or pickled file is a CliError naming it."""
    if path.is_file() and path.suffix not in (".npy", ".npz"):
        raise CliError(f"{path}: expected an .npz or .npy file, or a folder of image folders")
    try:
        return load_arrays(path)
    except ScoreFileError as error:
        raise CliError(str(error)) from None


def read_label_file(path: str | os.PathLike) -> np.ndarray:
    """Labels (N,) from a .npy array or a text file with one label per line."""
    path = Path(path)
    if path.suffix == ".npy":
        labels = _load_arrays(path)[""]
        if labels.ndim != 1:
            raise CliError(f"{path}: labels must be 1-D; got shape {labels.shape}")
        return labels
    if not path.is_file():
        raise CliError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    labels = []
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig").strip()  # a BOM starts some files
            except UnicodeDecodeError:
                raise CliError(f"{path}:{line}: not UTF-8 text") from None
            if not text or len(text.split()) != 1:
                raise CliError(f"{path}:{line}: expected one label, got {text!r}")
            labels.append(text)
    return np.asarray(labels)


def encode_labels(raw: np.ndarray, path) -> tuple[np.ndarray, list[str]]:
    """Raw labels (N,) -> class indices (N,) int64 in sorted order of the labels, names."""
    classes, labels = np.unique(raw, return_inverse=True)
    if classes.size < 2:
        raise CliError(f"{path}: need at least 2 classes; found {classes.size}")
    return labels.astype(np.int64).ravel(), [str(c) for c in classes]


def read_arrays(path: Path, labels_path: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features and raw labels (None when there are none) from .npz or .npy (+ labels file)."""
    arrays = _load_arrays(path)
    if "" in arrays:  # an .npy
        features, labels = arrays[""], None
    else:
        fkey = next((k for k in FEATURE_KEYS if k in arrays), None)
        lkey = next((k for k in LABEL_KEYS if k in arrays), None)
        if fkey is None:
            raise CliError(f"{path}: no features array (named one of {FEATURE_KEYS}); it "
                           f"holds {list(arrays)}")
        features, labels = arrays[fkey], arrays[lkey] if lkey else None
    if labels_path is not None:
        labels = read_label_file(labels_path)
    if labels is not None and labels.ndim != 1:
        raise CliError(f"{labels_path or path}: labels must be 1-D (N,); got shape "
                       f"{labels.shape}")
    if labels is not None and labels.shape != (features.shape[0],):
        source = labels_path or path
        raise CliError(f"{source}: {labels.size} labels for {features.shape[0]} feature rows")
    return _check_features(features, path), labels


def read_image(path: Path, mode: str | None, size: int | None) -> np.ndarray:
    """One image as float32 in [0, 1]: (H, W) grey or (H, W, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert(mode or ("L" if image.mode in ("1", "L", "I", "F") else "RGB"))
            if size is not None:
                image = image.resize((size, size))
            return np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as error:
        raise CliError(f"{path}: cannot read the image ({error})") from None


def read_image_folder(root: Path, size: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (N, H, W[, 3]), raw labels (N,) = sub-folder names, names 'identity/file'."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise CliError(f"{root}: no sub-folders; expected one sub-folder of images per identity")
    images, labels, names, mode = [], [], [], None
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CliError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            image = read_image(file, mode, size)
            mode = mode or ("L" if image.ndim == 2 else "RGB")
            if images and image.shape != images[0].shape:
                raise CliError(f"{file}: image is {image.shape[1]}x{image.shape[0]} but "
                               f"{names[0]} is {images[0].shape[1]}x{images[0].shape[0]}; "
                               "pass --image-size to resize all images")
            images.append(image)
            labels.append(folder.name)
            names.append(f"{folder.name}/{file.name}")
    return np.stack(images), np.asarray(labels), names


def read_train_data(path: str | os.PathLike, labels_path: str | None = None,
                    image_size: int | None = None) -> TrainData:
    """Features and class labels for training (see the module docstring for the formats)."""
    path = Path(path)
    if path.is_dir():
        features, raw, names = read_image_folder(path, image_size)
    else:
        features, raw = read_arrays(path, labels_path)
        names = [str(k) for k in range(features.shape[0])]
        if raw is None:
            raise CliError(f"{path}: no labels; pass --labels FILE (.npy, or text with one "
                           f"label per line) or use an .npz with a 'labels' array")
    labels, classes = encode_labels(raw, labels_path or path)
    return TrainData(features, labels, classes, names)


def read_features(path: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
    """Features only (labels ignored), for ``--embed``: .npz, .npy or an image folder."""
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path, image_size)[0]
    return read_arrays(path, None)[0]
