"""`vitrine baselines`: the scikit-learn models on the grids' own split, scored with the grids' metrics."""

import json

import pytest

from jobs import fit_baselines
from tune import classical


@pytest.mark.slow
def test_baselines_train_on_the_grids_training_split_and_learn(tiny_fashion_mnist, tmp_path):
    from tune.training import TrainConfig, prepare_data

    out = tmp_path / "bl"
    result = fit_baselines.run(fit_baselines.BaselinesConfig(data=str(tiny_fashion_mnist), out=str(out),
                                                             max_per_class={"svc": 10}))
    grid_split = prepare_data(TrainConfig(), str(tiny_fashion_mnist))
    assert result["train_images"] == len(grid_split.train_y) == 540  # 600 less the 10% validation
    assert result["test_images"] == len(grid_split.test_y) == 200
    assert result["data"]["sha256"] == grid_split.sha256
    assert [r["model"] for r in result["rows"]] == ["logistic_regression", "knn", "random_forest", "svc"]
    sizes = {r["model"]: r["train_images"] for r in result["rows"]}
    assert sizes == {"logistic_regression": 540, "knn": 540, "random_forest": 540, "svc": 100}
    for r in result["rows"]:
        m = r["metrics"]
        # The synthetic classes are easy: a model that saw misaligned labels or features scores ~10%.
        assert m["accuracy"] > 0.8, r["model"]
        assert m["num_samples"] == 200 and {"macro_f1", "cohen_kappa", "informedness"} <= set(m)
        assert r["fit_seconds"] >= 0 and r["predict_seconds"] >= 0

    stored = classical.read_result(str(out))
    assert stored["rows"][3]["metrics"]["accuracy"] == result["rows"][3]["metrics"]["accuracy"]
    table = (out / "baselines.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == 5  # the header and four models
    assert f"{100 * result['rows'][1]['metrics']['accuracy']:.2f}%" in table
    assert "svc 100 images" in table and "load average" in table

    # `vitrine compare --baselines DIR` alone puts the same table into a document.
    from jobs import compare_runs

    doc = tmp_path / "RESULTS.md"
    compare_runs.run(compare_runs.CompareConfig(baselines=(str(out),), out=str(tmp_path / "cmp"),
                                                markdown=str(doc), section="baselines"))
    begin, end = compare_runs.markers("baselines")
    assert doc.read_text().split(begin, 1)[1].split(end, 1)[0].strip() == table.strip()
    compare_runs.run(compare_runs.CompareConfig(baselines=(str(out), str(out)), out=str(tmp_path / "cmp"),
                                                markdown=str(doc), section="baselines"))
    block = doc.read_text().split(begin, 1)[1].split(end, 1)[0].strip()
    assert block == table.strip() + "\n\n" + table.strip()  # two results: two tables, a blank line apart


def test_the_command_runs_one_model_and_refuses_unknown_ones(tiny_fashion_mnist, tmp_path, capsys):
    from jobs import cli

    assert cli.main(["baselines", "--models", "knn", "--data", str(tiny_fashion_mnist),
                     "--out", str(tmp_path / "k"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in printed["rows"]] == ["knn"] and printed["rows"][0]["train_images"] == 540
    assert cli.main(["baselines", "--models", "xgboost", "--data", str(tiny_fashion_mnist)]) == 2
    assert "xgboost" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="vitrine baselines"):
        classical.read_result(str(tmp_path / "nothing"))
