import pytest
import torch

from src.data import load_data
from src.engine import make_model, predict, score
from src.evaluate import compare, error_overlap, misclassified, per_class_accuracy, score_model
from tests.conftest import model_cfg


def test_error_overlap_counts_shared_and_any_mistakes():
    labels = torch.tensor([0, 1, 2, 3, 4])
    preds = [torch.tensor([9, 1, 9, 3, 4]),   # wrong on 0 and 2
             torch.tensor([9, 9, 2, 3, 4]),   # wrong on 0 and 1
             torch.tensor([9, 1, 2, 3, 9])]   # wrong on 0 and 4
    assert error_overlap(preds, labels) == {"errors_shared_by_all": 1, "errors_in_any": 4}
    assert error_overlap([labels, labels], labels) == {"errors_shared_by_all": 0, "errors_in_any": 0}


def test_compare_names_the_best_and_the_gaps():
    summary = {"a": {"label": "A", "test_acc": 99.5, "gap": 0.1},
               "b": {"label": "B", "test_acc": 99.6, "gap": 0.4},
               "c": {"label": "C", "test_acc": 99.4, "gap": 0.2}}
    assert compare(summary) == {"best_test_acc": "B", "least_overfit": "A", "most_overfit": "B"}


def test_misclassified_lists_only_mistakes_most_confident_first():
    labels = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 2, 1, 3])
    conf = torch.tensor([0.99, 0.6, 0.8, 0.9])
    assert misclassified(pred, conf, labels, tuple("abcd")) == [
        {"index": 2, "true": "c", "predicted": "b", "confidence": 0.8},
        {"index": 1, "true": "b", "predicted": "c", "confidence": 0.6}]


def test_per_class_accuracy_in_percent():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 1, 1, 0])
    assert per_class_accuracy(pred, labels, 2) == [75.0, 50.0]


def test_score_model_scores_clean_train_and_test_sets(dataset_file):
    data = load_data(dataset_file)
    model = make_model(model_cfg(norm="gn"), seed=1)
    r = score_model(model, data, batch_size=50)
    logits = predict(model, data.test_images, data.mean, data.std)
    assert (r["test_loss"], r["test_acc"]) == score(logits, data.test_labels)
    assert torch.equal(r["pred"], logits.argmax(1)) and r["conf"].shape == (len(data.test_labels),)
    assert 0 <= r["train_acc"] <= 100


def test_per_class_accuracy_is_recall_not_precision():
    """Of the images of each true class, the share predicted right: here class 0's three images are right once,
    class 1's one image always (precision would say 100 and 33.3 instead)."""
    labels = torch.tensor([0, 0, 0, 1])
    pred = torch.tensor([0, 1, 1, 1])
    assert per_class_accuracy(pred, labels, 2) == pytest.approx([100 / 3, 100.0])


class FirstPixels(torch.nn.Module):
    """Returns the first 10 values of its (standardized) input: what `predict` feeds a model, made visible."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # predict finds the device through the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


def test_predict_standardizes_by_hand_pixel_over_255_minus_mean_over_std():
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0, :3] = torch.tensor([0, 51, 255], dtype=torch.uint8)
    logits = predict(FirstPixels(), images, mean=0.1, std=0.4, channels_last=False)
    # (0 / 255 - 0.1) / 0.4 = -0.25, (51 / 255 - 0.1) / 0.4 = 0.25, (255 / 255 - 0.1) / 0.4 = 2.25
    torch.testing.assert_close(logits[0, :3], torch.tensor([-0.25, 0.25, 2.25]))
    torch.testing.assert_close(logits[1], torch.full((10,), -0.25))


def test_the_gap_is_train_minus_test_accuracy(workdir, monkeypatch):
    """metrics/<variant>.json's gap from a known train (99.25) and test (97.5) accuracy: +1.75, not -1.75."""
    import json
    from pathlib import Path

    from src import cli, evaluate, train

    for v in ("bn_l1", "gn", "ln"):
        assert cli.run(train.app, [v, "--no-progress"]) == 0

    def known(*args, **kwargs) -> dict:
        return {**score_model(*args, **kwargs), "train_acc": 99.25, "test_acc": 97.5}

    monkeypatch.setattr(evaluate, "score_model", known)
    assert cli.run(evaluate.app, []) == 0
    for v in ("bn_l1", "gn", "ln"):
        m = json.loads(Path(f"metrics/{v}.json").read_text())
        assert (m["train_acc"], m["test_acc"], m["gap"]) == (99.25, 97.5, 1.75)
