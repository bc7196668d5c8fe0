import gzip

import numpy as np
import pytest
import torch

from src.data import IMAGE_MAGIC, LABEL_MAGIC, load_data, read_idx, read_split
from src.errors import UserError
from tests.conftest import idx_bytes, synthetic_split, write_idx


def test_reads_what_was_written(tmp_path):
    images, labels = synthetic_split(20, 0)
    got_x, got_y = read_split(write_idx(tmp_path / "x.gz", images, IMAGE_MAGIC),
                              write_idx(tmp_path / "y.gz", labels, LABEL_MAGIC))
    assert np.array_equal(got_x, images) and np.array_equal(got_y, labels)


def _bad(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        (b"plain bytes, not gzip", "not a gzip file"),
        (gzip.compress(idx_bytes(np.zeros((3, 28, 28)), IMAGE_MAGIC))[:-12], "truncated or corrupt"),
        (gzip.compress(idx_bytes(np.zeros((3, 28, 28)), LABEL_MAGIC)), "wrong IDX magic number 2049"),
        (gzip.compress(idx_bytes(np.zeros((3, 28, 28)), IMAGE_MAGIC)[:-5]), "header says 3 items"),
    ],
)
def test_corrupt_files_are_named_with_the_problem(tmp_path, content, message):
    path = _bad(tmp_path, "train-images-idx3-ubyte.gz", content)
    with pytest.raises(UserError, match=message) as e:
        read_idx(path, IMAGE_MAGIC)
    assert str(path) in e.value.message


def test_split_checks(tmp_path):
    images, labels = synthetic_split(10, 0)
    x = write_idx(tmp_path / "x.gz", images, IMAGE_MAGIC)
    with pytest.raises(UserError, match="expected \\(28, 28\\)"):
        read_split(write_idx(tmp_path / "s.gz", np.zeros((10, 27, 28)), IMAGE_MAGIC),
                   write_idx(tmp_path / "y.gz", labels, LABEL_MAGIC))
    with pytest.raises(UserError, match="label 12 outside 0..9"):
        read_split(x, write_idx(tmp_path / "y.gz", np.full(10, 12), LABEL_MAGIC))
    with pytest.raises(UserError, match="holds 10 images but .* holds 9 labels"):
        read_split(x, write_idx(tmp_path / "y.gz", labels[:9], LABEL_MAGIC))


def test_load_data_roundtrip_and_errors(dataset_file, tmp_path):
    data = load_data(dataset_file)
    assert data.train_images.shape == (512, 1, 28, 28) and data.test_labels.shape == (128,)
    assert 0 < data.mean < 1 and 0 < data.std < 1 and data.classes[3] == "3"
    with pytest.raises(UserError, match="not found; the download stage makes it"):
        load_data(tmp_path / "missing.npz")
    with pytest.raises(UserError, match="is corrupt"):
        load_data(_bad(tmp_path, "bad.npz", dataset_file.read_bytes()[:1000]))


def test_holdout_scores_the_last_training_images_instead_of_the_test_set(dataset_file):
    data = load_data(dataset_file)
    held = data.holdout(100)
    assert len(held.train_images) == len(data.train_images) - 100 and len(held.test_images) == 100
    assert torch.equal(held.test_images, data.train_images[-100:])
    assert torch.equal(held.test_labels, data.train_labels[-100:])
    kept = data.train_images[:-100].double() / 255
    assert held.mean == pytest.approx(float(kept.mean())) and held.mean != data.mean  # statistics of what trains
    assert data.holdout(0) is data
    with pytest.raises(UserError, match="train.validation = 512 must be below the 512 training images"):
        data.holdout(512)
