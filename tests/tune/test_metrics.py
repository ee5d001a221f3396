import json

import numpy as np
import pytest
from sklearn import metrics as skm

from tune.metrics import classification_metrics, confusion_matrix, metrics_table_markdown

NAMES10 = [f"c{i}" for i in range(10)]


def _check_against_sklearn(y_true, y_pred, names):
    labels = list(range(len(names)))
    got = classification_metrics(y_true, y_pred, names)

    np.testing.assert_array_equal(
        np.array(got["confusion_matrix"]), skm.confusion_matrix(y_true, y_pred, labels=labels)
    )
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    np.testing.assert_allclose([c["precision"] for c in got["per_class"]], p)
    np.testing.assert_allclose([c["recall"] for c in got["per_class"]], r)
    np.testing.assert_allclose([c["f1"] for c in got["per_class"]], f)
    assert [c["support"] for c in got["per_class"]] == s.tolist()
    mp, mr, mf, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    assert got["macro_precision"] == pytest.approx(mp)
    assert got["macro_recall"] == pytest.approx(mr)
    assert got["macro_f1"] == pytest.approx(mf)
    assert got["weighted_f1"] == pytest.approx(
        skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    )
    assert got["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred, labels=labels))

    # Informedness from sklearn's confusion matrix, one-vs-rest per class.
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    n = cm.sum()
    youden = []
    for k in labels:
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        tn = n - tp - fn - fp
        tpr = tp / (tp + fn) if tp + fn else 0.0
        tnr = tn / (tn + fp) if tn + fp else 0.0
        youden.append(tpr + tnr - 1)
        assert got["per_class"][k]["specificity"] == pytest.approx(tnr)
    assert got["informedness"] == pytest.approx(np.mean(youden))

    assert got["num_samples"] == len(y_true)
    assert got["class_names"] == list(names)
    assert [c["class"] for c in got["per_class"]] == list(names)
    return got


def test_random_labels_match_sklearn():
    rng = np.random.default_rng(1234)
    y_true = rng.integers(0, 10, 2000)
    # Mostly correct with noise, so scores are neither trivial nor degenerate.
    y_pred = np.where(rng.random(2000) < 0.7, y_true, rng.integers(0, 10, 2000))
    got = _check_against_sklearn(y_true, y_pred, NAMES10)
    assert 0.6 < got["accuracy"] < 0.85


def test_fully_random_labels_match_sklearn():
    rng = np.random.default_rng(7)
    _check_against_sklearn(rng.integers(0, 10, 500), rng.integers(0, 10, 500), NAMES10)


def test_class_never_predicted_and_absent_class():
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 9, 600)  # class 9 never occurs in y_true
    y_pred = np.where(rng.random(600) < 0.6, y_true, rng.integers(0, 10, 600))
    y_pred[y_pred == 3] = 4  # class 3 is never predicted
    got = _check_against_sklearn(y_true, y_pred, NAMES10)
    assert got["per_class"][3]["precision"] == 0.0
    assert got["per_class"][3]["recall"] == 0.0
    assert got["per_class"][9]["support"] == 0
    assert got["per_class"][9]["recall"] == 0.0


def test_perfect_prediction():
    y = np.arange(10).repeat(7)
    got = _check_against_sklearn(y, y, NAMES10)
    assert got["accuracy"] == 1.0
    assert got["macro_f1"] == 1.0
    assert got["cohen_kappa"] == pytest.approx(1.0)
    assert got["informedness"] == pytest.approx(1.0)
    assert all(c["specificity"] == 1.0 for c in got["per_class"])


def test_binary_informedness_is_adjusted_balanced_accuracy():
    rng = np.random.default_rng(11)
    y_true = rng.integers(0, 2, 300)
    y_pred = np.where(rng.random(300) < 0.75, y_true, 1 - y_true)
    got = classification_metrics(y_true, y_pred, ["neg", "pos"])
    # Youden's J = TPR + TNR - 1 = 2 * balanced_accuracy - 1.
    assert got["informedness"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred, adjusted=True))


def test_three_class_informedness_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    # class 0: TPR 2/3, TNR 3/3; class 1: TPR 1/2, TNR 3/4; class 2: TPR 1/1, TNR 4/5
    expected = ((2 / 3 + 1 - 1) + (1 / 2 + 3 / 4 - 1) + (1 + 4 / 5 - 1)) / 3
    got = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert got["informedness"] == pytest.approx(expected)
    assert got["per_class"][1]["specificity"] == pytest.approx(3 / 4)


def test_confusion_matrix_orientation_and_dtype():
    cm = confusion_matrix([0, 0, 1, 2], [1, 0, 1, 1], 3)
    assert cm.dtype == np.int64
    assert cm.shape == (3, 3)
    # Row = true, column = predicted.
    assert cm[0, 1] == 1 and cm[2, 1] == 1 and cm[1, 0] == 0
    np.testing.assert_array_equal(cm, skm.confusion_matrix([0, 0, 1, 2], [1, 0, 1, 1], labels=[0, 1, 2]))


def test_single_class_everywhere_is_json_safe():
    got = classification_metrics([1, 1, 1], [1, 1, 1], ["a", "b"])
    assert got["accuracy"] == 1.0
    # Kappa is undefined here (chance agreement is 1); it must not be NaN.
    assert got["cohen_kappa"] == 0.0
    json.dumps(got, allow_nan=False)


def test_result_is_json_serialisable_with_plain_types():
    rng = np.random.default_rng(3)
    got = classification_metrics(rng.integers(0, 10, 100).astype(np.int32), rng.integers(0, 10, 100), NAMES10)
    text = json.dumps(got, allow_nan=False)
    assert json.loads(text) == got
    assert type(got["num_samples"]) is int
    assert type(got["confusion_matrix"][0][0]) is int
    assert type(got["per_class"][0]["support"]) is int
    assert type(got["per_class"][0]["f1"]) is float


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "match"),
    [
        ([0, 1], [0], ["a", "b"], "length"),
        ([], [], ["a", "b"], "empty"),
        ([0, 2], [0, 1], ["a", "b"], "y_true.*label 2"),
        ([0, 1], [0, -1], ["a", "b"], "y_pred.*label -1"),
        ([0, 1], [0, 1], [], "class_names"),
        ([0.5, 1], [0, 1], ["a", "b"], "integer"),
        (["a", "b"], [0, 1], ["a", "b"], "integer"),
        ([[0, 1]], [[0, 1]], ["a", "b"], "1-D"),
    ],
)
def test_input_validation(y_true, y_pred, names, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, names)


def test_confusion_matrix_validation():
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([0], [0], 0)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)


def test_integral_float_labels_are_accepted():
    got = classification_metrics(np.array([0.0, 1.0, 1.0]), [0, 1, 0], ["a", "b"])
    assert got["confusion_matrix"] == [[1, 0], [1, 1]]


def test_metrics_table_markdown():
    got = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["Shirt", "Bag", "Coat|X"])
    md = metrics_table_markdown(got)
    lines = md.splitlines()
    assert lines[0].startswith("| Class | Precision | Recall | F1 | Support |")
    assert "| Shirt | 50.00% | 50.00% | 50.00% | 2 |" in lines
    assert "| Bag | 66.67% | 100.00% | 80.00% | 2 |" in lines
    assert any(line.startswith("| Coat\\|X |") for line in lines)  # pipe escaped
    assert any(line.startswith("| **macro avg** |") and line.endswith("| 6 |") for line in lines)
    assert "Accuracy: **66.67%**" in md
    assert f"Cohen's kappa: **{got['cohen_kappa']:.4f}**" in md
    assert f"Informedness: **{got['informedness']:.4f}**" in md
