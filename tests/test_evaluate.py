import torch

from src.evaluate import compare, error_overlap


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
