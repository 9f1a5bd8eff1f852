"""Tests of zsq_engine.data: idx parsing, Fashion-MNIST resolution/caching, ImageFolder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from zsq_engine.data import fashion_mnist as fm
from zsq_engine.data import (
    FMNIST_MEAN,
    FMNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IdxFormatError,
    ImageFolder,
    fashion_mnist_loader,
    imagefolder_loader,
    load_fashion_mnist,
    read_idx,
)

SYSTEM_DIR = Path(fm.FMNIST_SYSTEM_DIR)
HAVE_SYSTEM_FMNIST = all(
    (SYSTEM_DIR / f"{p}-{k}-ubyte.gz").is_file()
    for p in ("train", "t10k")
    for k in ("images-idx3", "labels-idx1")
)
needs_fmnist = pytest.mark.skipif(
    not HAVE_SYSTEM_FMNIST,
    reason=f"Fashion-MNIST not installed in {SYSTEM_DIR} (apt-get install dataset-fashion-mnist)",
)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_split(directory: Path, prefix: str, n: int, seed: int, gz: bool = True) -> tuple:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = idx_bytes(arr)
        if gz:
            with gzip.open(directory / (stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            (directory / stem).write_bytes(data)
    return images, labels


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch):
    monkeypatch.delenv(fm.FMNIST_ENV_VAR, raising=False)


# ----------------------------------------------------------------------------- idx parsing


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 251
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    data = idx_bytes(arr)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    out = read_idx(path, expected_ndim=3)
    assert out.dtype == np.uint8 and out.shape == (3, 28, 28)
    np.testing.assert_array_equal(out, arr.astype(np.uint8))


def test_read_idx_rejects_bad_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    data[2] = 0x0D  # float32 type code: not a ubyte file
    path = tmp_path / "bad_magic"
    path.write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(path, expected_ndim=3)


def test_read_idx_rejects_wrong_ndim(tmp_path):
    path = tmp_path / "labels_as_images"
    path.write_bytes(idx_bytes(np.zeros((5,), np.uint8)))
    with pytest.raises(IdxFormatError, match="dimensions"):
        read_idx(path, expected_ndim=3)


def test_read_idx_rejects_truncated_payload(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    path = tmp_path / "truncated"
    path.write_bytes(data[:-100])
    with pytest.raises(IdxFormatError, match="corrupt or truncated"):
        read_idx(path, expected_ndim=3)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut the gzip stream
    with pytest.raises(IdxFormatError):
        read_idx(path, expected_ndim=3)


def test_read_idx_rejects_tiny_file(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(IdxFormatError, match="too short"):
        read_idx(path, expected_ndim=1)


# ------------------------------------------------------------------ Fashion-MNIST loading


def test_missing_dir_error_says_how_to_get_data(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist("test", root=tmp_path / "does_not_exist")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and fm.FMNIST_ENV_VAR in msg
    assert str(tmp_path / "does_not_exist") in msg


def test_env_var_dir_without_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(fm.FMNIST_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=fm.FMNIST_ENV_VAR):
        load_fashion_mnist("train")


def test_unknown_split():
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_resolution_order_and_cache(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    env_dir.mkdir()
    arg_dir.mkdir()
    env_images, env_labels = write_fake_split(env_dir, "t10k", 5, seed=1)
    arg_images, _ = write_fake_split(arg_dir, "t10k", 7, seed=2, gz=False)
    monkeypatch.setenv(fm.FMNIST_ENV_VAR, str(env_dir))

    images, labels = load_fashion_mnist("test")  # env var wins over the system dir
    assert images.dtype == torch.uint8 and images.shape == (5, 28, 28)
    assert labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), env_images)
    np.testing.assert_array_equal(labels.numpy(), env_labels)

    images_arg, _ = load_fashion_mnist("test", root=arg_dir)  # explicit root wins over env
    np.testing.assert_array_equal(images_arg.numpy(), arg_images)

    again, _ = load_fashion_mnist("test")
    assert again is images  # served from the in-memory cache


def test_mismatched_label_count_is_rejected(tmp_path):
    write_fake_split(tmp_path, "t10k", 5, seed=3)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros((4,), np.uint8)))
    with pytest.raises(IdxFormatError, match="4 labels for 5 images"):
        load_fashion_mnist("test", root=tmp_path)


def test_loader_normalization(tmp_path):
    images, labels = write_fake_split(tmp_path, "t10k", 10, seed=4)
    batches = list(fashion_mnist_loader("test", batch_size=4, root=tmp_path))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (10, 1, 28, 28)
    expected = (torch.from_numpy(images).float() / 255.0 - FMNIST_MEAN[0]) / FMNIST_STD[0]
    torch.testing.assert_close(x[:, 0], expected)
    torch.testing.assert_close(y, torch.from_numpy(labels).long())
    raw = next(iter(fashion_mnist_loader("test", batch_size=10, root=tmp_path, normalize=False)))[0]
    assert float(raw.min()) >= 0.0 and float(raw.max()) <= 1.0


@pytest.mark.slow
@needs_fmnist
def test_real_fashion_mnist_splits():
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    assert train_x.shape == (60000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10000, 28, 28) and test_y.shape == (10000,)
    assert torch.equal(torch.bincount(train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test_y), torch.full((10,), 1000))
    # The documented normalisation constants are the train split's pixel statistics.
    pixels = train_x.to(torch.float64) / 255.0
    assert abs(pixels.mean().item() - FMNIST_MEAN[0]) < 1e-3
    assert abs(pixels.std().item() - FMNIST_STD[0]) < 1e-3


# --------------------------------------------------------------------------- ImageFolder


def _save(path: Path, size, color) -> None:
    from PIL import Image

    Image.new("RGB", size, color).save(path)


@pytest.fixture
def image_tree(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "val"
    (root / "zebra").mkdir(parents=True)
    (root / "ant" / "nested").mkdir(parents=True)
    _save(root / "zebra" / "a.png", (300, 260), (255, 0, 128))
    _save(root / "zebra" / "b.JPG", (200, 320), (10, 20, 30))
    _save(root / "ant" / "c.jpeg", (256, 256), (0, 0, 0))
    _save(root / "ant" / "nested" / "d.png", (400, 240), (255, 255, 255))
    (root / "ant" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_classes_and_shapes(image_tree):
    ds = ImageFolder(image_tree)
    assert ds.classes == ["ant", "zebra"]
    assert ds.class_to_idx == {"ant": 0, "zebra": 1}
    assert len(ds) == 4
    assert [label for _, label in ds.samples] == [0, 0, 1, 1]
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    # solid (255, 0, 128) PNG: every pixel normalised with the ImageNet mean/std
    x, label = ds[[p for p, _ in ds.samples].index(str(image_tree / "zebra" / "a.png"))]
    assert label == 1
    expected = (torch.tensor([255, 0, 128]) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(x.amax(dim=(1, 2)), x.amin(dim=(1, 2)))


def test_imagefolder_center_crop_geometry(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "geo"
    (root / "c").mkdir(parents=True)
    w, h = 512, 256  # shorter side already 256: the resize is the identity
    cols = (np.arange(w) % 256).astype(np.uint8)
    rows = (np.arange(h) % 256).astype(np.uint8)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = cols[None, :]
    arr[..., 1] = rows[:, None]
    Image.fromarray(arr).save(root / "c" / "g.png")
    ds = ImageFolder(root, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x, _ = ds[0]
    left, top = (w - 224) // 2, (h - 224) // 2
    torch.testing.assert_close(x[0, 0], torch.from_numpy(cols[left : left + 224]).float() / 255.0)
    torch.testing.assert_close(x[1, :, 0], torch.from_numpy(rows[top : top + 224]).float() / 255.0)


def test_imagefolder_loader_batches(image_tree):
    x, y = next(iter(imagefolder_loader(image_tree, batch_size=3)))
    assert x.shape == (3, 3, 224, 224)
    assert y.dtype == torch.int64 and y.tolist() == [0, 0, 1]
    small = ImageFolder(image_tree, resize_size=40, crop_size=32)
    assert small[0][0].shape == (3, 32, 32)


def test_imagefolder_missing_and_empty_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    with pytest.raises(RuntimeError, match="no class sub-directories"):
        ImageFolder(tmp_path)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(RuntimeError, match="no image files"):
        ImageFolder(tmp_path)
