"""Every --data form: named datasets, IDX, arrays, CSV, image folders; splits and scaling."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from vaekit.data import DataConfig, load_data
from vaekit.errors import VaekitError


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (50, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 50))
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 20))
    return d


def test_digits_is_split_with_a_seed_and_scaled_to_unit_interval():
    a = load_data(DataConfig("digits"))
    b = load_data(DataConfig("digits"))
    assert a.info.shape == (1, 8, 8) and a.info.num_classes == 10
    assert (a.info.n_train, a.info.n_val, a.info.n_test) == (1455, 162, 180)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert a.train.x.min() >= 0 and a.train.x.max() <= 1
    c = load_data(DataConfig("digits", split_seed=1))
    assert not torch.equal(a.test.x, c.test.x)


def test_idx_directory_keeps_its_own_test_split(idx_dir, monkeypatch):
    d = load_data(DataConfig(f"fashion-mnist:{idx_dir}", val_fraction=0))
    assert d.info.test_source == "own" and d.val is None
    assert (len(d.train), len(d.test)) == (50, 20)
    assert d.train.x.shape == (50, 1, 28, 28) and d.train.x.dtype == torch.float32
    assert d.info.class_names[0] == "T-shirt/top"
    monkeypatch.setenv("VAEKIT_DATA", str(idx_dir.parent))
    (idx_dir.parent / "mnist").symlink_to(idx_dir)
    assert len(load_data(DataConfig("mnist", val_fraction=0)).train) == 50


def test_fashion_mnist_from_the_debian_package(fashion_mnist):
    d = load_data(DataConfig("fashion-mnist", val_fraction=0))
    assert (len(d.train), len(d.test)) == (60000, 10000)
    assert d.info.num_classes == 10 and d.info.shape == (1, 28, 28)


@pytest.mark.parametrize("shape,kind", [((40, 6), "vector"), ((40, 2, 5, 5), "image"), ((40, 7, 7), "image")])
def test_npy_arrays(tmp_path, shape, kind):
    path = tmp_path / "a.npy"
    np.save(path, np.random.default_rng(0).random(shape).astype(np.float32))
    d = load_data(DataConfig(str(path)))
    assert d.info.kind == kind
    assert len(d.train) + len(d.val) + len(d.test) == 40


def test_npz_with_labels_and_uint8_scaling(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.full((30, 1, 4, 4), 255, np.uint8), y=np.arange(30) % 3)
    d = load_data(DataConfig(str(path)))
    assert d.info.num_classes == 3 and float(d.train.x.max()) == 1.0


def test_csv_is_standardised_with_saved_training_statistics(table_csv):
    d = load_data(DataConfig(str(table_csv), label_column="label"))
    assert d.info.kind == "vector" and d.info.feature_names == ("a", "b", "c", "d")
    assert d.info.num_classes == 2
    assert torch.allclose(d.train.x.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(d.train.x.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    again = load_data(DataConfig(str(table_csv), label_column="label"), saved=d.info)
    assert torch.equal(again.test.x, d.test.x)


def test_image_folder_with_class_subfolders_resolution_and_colour(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    d = load_data(DataConfig(str(tmp_path / "imgs"), resolution=16, val_fraction=0))
    assert d.info.shape == (3, 16, 16) and d.info.class_names == ("cats", "dogs")
    grey = load_data(DataConfig(str(tmp_path / "imgs"), resolution=8, color="grey", val_fraction=0))
    assert grey.info.shape == (1, 8, 8)
    with pytest.raises(VaekitError, match=r"differ in size|--resolution"):
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "imgs" / "cats" / "small.png")
        load_data(DataConfig(str(tmp_path / "imgs")))


def test_static_and_dynamic_binarisation(tmp_path):
    static = load_data(DataConfig("digits", binarize="static"))
    assert set(static.train.x.unique().tolist()) <= {0.0, 1.0}
    dynamic = load_data(DataConfig("digits", binarize="dynamic"))
    assert set(dynamic.test.x.unique().tolist()) <= {0.0, 1.0}  # held-out data binarised once, fixed seed
    assert len(dynamic.train.x.unique()) > 2  # the training data stays grey; batches are resampled
    assert torch.equal(dynamic.test.x, load_data(DataConfig("digits", binarize="dynamic")).test.x)


def test_test_data_option_and_shape_check(tmp_path):
    np.save(tmp_path / "train.npy", np.random.default_rng(0).random((30, 5)).astype(np.float32))
    np.save(tmp_path / "test.npy", np.random.default_rng(1).random((10, 5)).astype(np.float32))
    d = load_data(DataConfig(str(tmp_path / "train.npy"), test_spec=str(tmp_path / "test.npy")))
    assert d.info.test_source == "file" and len(d.test) == 10
