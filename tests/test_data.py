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
        (gzip.compress(IMAGE_MAGIC.to_bytes(4, "big")), "IDX header is cut short"),  # the magic number alone
        (gzip.compress((1234).to_bytes(4, "big")), "wrong IDX magic number 1234 "),
        (gzip.compress(b"\x00\x00\x08"), "wrong IDX magic number None "),
        # A count of 2**24 + 1 items, each byte of the header read: its payload is 10 bytes.
        (gzip.compress(IMAGE_MAGIC.to_bytes(4, "big") + (2**24 + 1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                       + bytes(10)), r"header says 16777217 items of shape \(28, 28\) \(13153338128 bytes\) but the "
                                     "file holds 10 bytes"),
        (gzip.compress(IMAGE_MAGIC.to_bytes(4, "big") + (1).to_bytes(4, "big") + (2**24 + 1).to_bytes(4, "big")
                       + (28).to_bytes(4, "big")), r"header says 1 items of shape \(16777217, 28\)"),
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
    with pytest.raises(UserError, match="images are \\(27, 28\\) pixels, expected \\(28, 28\\)"):
        read_split(write_idx(tmp_path / "s.gz", np.zeros((10, 27, 28)), IMAGE_MAGIC),
                   write_idx(tmp_path / "y.gz", labels, LABEL_MAGIC))
    with pytest.raises(UserError, match="label 12 outside 0..9"):
        read_split(x, write_idx(tmp_path / "y.gz", np.full(10, 12), LABEL_MAGIC))
    with pytest.raises(UserError, match="holds 10 images but .* holds 9 labels"):
        read_split(x, write_idx(tmp_path / "y.gz", labels[:9], LABEL_MAGIC))
    with pytest.raises(UserError, match="label 10 outside 0..9"):
        read_split(x, write_idx(tmp_path / "y.gz", np.full(10, 10), LABEL_MAGIC))
    with pytest.raises(UserError, match="holds no images"):
        read_split(write_idx(tmp_path / "e.gz", np.zeros((0, 28, 28)), IMAGE_MAGIC),
                   write_idx(tmp_path / "y.gz", labels[:0], LABEL_MAGIC))


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


def test_holdout_keeps_the_first_labels_and_takes_the_population_std(dataset_file):
    data = load_data(dataset_file)
    held = data.holdout(1)  # the least that can be held out
    assert torch.equal(held.train_labels, data.train_labels[:-1])
    assert torch.equal(held.test_labels, data.train_labels[-1:])
    kept = data.train_images[:-1].numpy().astype(np.float64) / 255
    assert held.std == pytest.approx(np.std(kept), rel=1e-12)  # numpy's std: divided by n, not n - 1


def test_the_pixel_statistics_of_the_dataset_file_are_on_the_0_to_1_scale(tmp_path):
    from src.data import save_data

    images = np.zeros((2, 28, 28), np.uint8)
    images[1] = 255  # half the pixels black, half white: mean 1/2, population std 1/2
    arrays = {"train_images": images, "train_labels": np.array([0, 1]), "test_images": images,
              "test_labels": np.array([1, 0])}
    assert save_data(tmp_path / "d.npz", arrays, ["a", "b"]) == {"mean": 0.5, "std": 0.5}
    data = load_data(tmp_path / "d.npz")
    assert (data.mean, data.std, data.classes) == (0.5, 0.5, ("a", "b"))


def _with(arrays: dict, **changes) -> dict:
    out = {k: v for k, v in arrays.items() if k not in changes or changes[k] is not None}
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


@pytest.mark.parametrize("change, message", [
    ({"std": None}, "it lacks std"),
    ({"classes": np.array([["0", "1"]] * 5)}, "class names are not a list of strings"),
    ({"train_images": np.zeros((512, 28, 28), np.float32)}, "train_images is float32 \\(512, 28, 28\\)"),
    ({"train_labels": np.zeros(512)}, "train_labels is float64 \\(512,\\)"),
    ({"test_labels": np.full(128, -1)}, "test_labels holds a label outside 0..9"),
    ({"test_labels": np.full(128, 10)}, "test_labels holds a label outside 0..9"),
    ({"std": np.float64(0.0)}, "pixel mean and std are not two finite numbers"),
    ({"mean": np.array([0.1])}, "pixel mean and std are not two finite numbers"),
    ({"extra": np.array([{"a": 1}], dtype=object)}, "is corrupt"),  # never unpickled
])
def test_a_damaged_dataset_file_is_refused_with_what_is_wrong(dataset_file, tmp_path, change, message):
    with np.load(dataset_file) as z:
        arrays = {k: z[k] for k in z.files}
    path = tmp_path / "changed.npz"
    np.savez(path, **_with(arrays, **change))
    with pytest.raises(UserError, match=message):
        load_data(path)
