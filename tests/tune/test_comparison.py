"""`vitrine compare` on a real (tiny) grid run: every number in its table comes from the run and
the claims file."""

import json
from pathlib import Path

import pytest

from jobs import compare_runs
from tune import comparison
from tune.grid import load_grid_config, run as run_grid

CLAIMS = """
claims:
  - {id: rebuilt, source: Paper A, model: small CNN, accuracy: 0.5, architectures: [cnn_dropout_1]}
  - {id: anything, source: Paper B, model: some CNN, accuracy: 0.05, architectures: []}
  - {id: absent, source: Paper C, model: big CNN, accuracy: 0.9, architectures: [seed_cnn]}
"""


@pytest.fixture(scope="module")
def grid_run(ray_local, tiny_fashion_mnist, tmp_path_factory):
    """cnn_dropout_1 × {adam, sgd} × {1e-2, 1e-3}, one epoch on 20 tiles a class: four tested trials."""
    store = tmp_path_factory.mktemp("compare-store")
    cfg = load_grid_config(None, ["train.epochs=1", "train.max_per_class=20", "train.batch_size=64",
                                  "train.early_stopping_patience=0", "export=false", "robustness_images=0",
                                  "explanation_images=0"],
                           name="cmp", storage=str(store), data=str(tiny_fashion_mnist),
                           architectures=["cnn_dropout_1"], optimizers=["adam", "sgd"], learning_rates=[0.01, 0.001])
    return run_grid(cfg)


@pytest.fixture
def claims_file(tmp_path):
    path = tmp_path / "claims.yaml"
    path.write_text(CLAIMS)
    return str(path)


@pytest.mark.slow
def test_each_trial_is_set_against_its_claim_with_numbers_from_the_run(grid_run, claims_file, tmp_path):
    out = tmp_path / "out"
    result = compare_runs.run(compare_runs.CompareConfig(runs=(grid_run.run_uri,), claims=claims_file, out=str(out)))

    tested = {r["trial_id"]: r["test_accuracy"] for r in grid_run.leaderboard}
    assert len(tested) == 4 and all(v is not None for v in tested.values())
    rows = {r["trial_id"]: r for r in result["trials"]}
    assert set(rows) == set(tested)
    for tid, acc in tested.items():
        r = rows[tid]
        assert r["test_accuracy"] == acc and r["published_accuracy"] == 0.5 and r["claim"] == "rebuilt"
        assert r["difference"] == pytest.approx(acc - 0.5)
        assert r["epochs_run"] == 1 and r["max_epochs"] == 1 and r["grid"] == "cmp"

    verdicts = {c["claim"]: c for c in result["claims"]}
    assert verdicts["absent"]["verdict"] == "not run" and verdicts["absent"]["trials"] == 0
    rebuilt = verdicts["rebuilt"]
    assert rebuilt["best"]["test_accuracy"] == max(tested.values())
    assert rebuilt["worst_test_accuracy"] == min(tested.values())
    assert rebuilt["reaching"] == sum(v >= 0.5 for v in tested.values())
    assert rebuilt["verdict"] == ("reproduced" if max(tested.values()) >= 0.5 else
                                  "within" if max(tested.values()) >= 0.49 else "not reproduced")
    # No topology: set against every trial compared.
    assert verdicts["anything"]["trials"] == 4
    assert verdicts["anything"]["reaching"] == sum(v >= 0.05 for v in tested.values())

    md = (out / "comparison.md").read_text()
    for acc in tested.values():
        assert f"**{100 * acc:.2f}%**" in md
    assert "50.00% — Paper A, small CNN" in md and "| not run |" in md
    assert json.loads((out / "comparison.json").read_text())["figures"] == ["heatmap-cnn_dropout_1.png"]
    assert (out / "heatmap-cnn_dropout_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The heatmap's cells are the trials' test accuracies.
    from tune.report_figures import optimizer_lr_grid

    optimizers, lrs, values, _ = optimizer_lr_grid(result["trials"], metric="test_accuracy")
    assert optimizers == ["adam", "sgd"] and lrs == [0.001, 0.01]
    by_cell = {(r["optimizer"], r["learning_rate"]): r["test_accuracy"] for r in grid_run.leaderboard}
    assert values[1, 1] == by_cell[("sgd", 0.01)] and values[0, 0] == by_cell[("adam", 0.001)]


@pytest.mark.slow
def test_compare_splices_its_table_into_a_markdown_file_with_working_figure_links(grid_run, claims_file, tmp_path):
    from jobs import cli

    doc = tmp_path / "docs" / "RESULTS.md"
    doc.parent.mkdir()
    begin, end = compare_runs.markers("tiny")
    doc.write_text(f"# Results\n\nbefore\n\n{begin}\nold table\n{end}\n\nafter\n")
    argv = ["compare", str(Path(grid_run.run_uri).parent), "--claims", claims_file, "--out", str(tmp_path / "cmp"),
            "--markdown", str(doc), "--section", "tiny"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0  # a second run replaces the block, not appends another

    text = doc.read_text()
    assert text.startswith("# Results\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old table" not in text and text.count(begin) == 1 and text.count(end) == 1
    assert "Command: `vitrine compare " in text  # the grid's directory: its CURRENT run
    link = text.split("](", 1)[1].split(")", 1)[0]
    assert link.endswith("heatmap-cnn_dropout_1.png") and (doc.parent / link).is_file()


@pytest.mark.slow
def test_without_evaluate_all_only_the_best_trial_has_a_test_accuracy(grid_run):
    summary = comparison.read_run(grid_run.run_uri)
    best_id = summary["best"]["trial_id"]
    for r in summary["leaderboard"]:
        r.pop("test_accuracy")
    claims = comparison.load_claims(None)
    rows = comparison.trial_rows([summary], claims)
    assert [r["trial_id"] for r in rows if r["test_accuracy"] is not None] == [best_id]
    assert next(r for r in rows if r["trial_id"] == best_id)["test_accuracy"] == summary["best"]["test_accuracy"]
    hodecker = next(c for c in comparison.claim_rows(rows, claims, 0.01) if c["claim"] == "hodecker")
    assert hodecker["trials"] == 1


def test_the_shipped_claims_name_registered_architectures():
    from tune.models import get_model_info

    claims = comparison.load_claims(None)
    assert len({c.id for c in claims}) == len(claims) >= 4
    for c in claims:
        assert 0.5 < c.accuracy < 1.0 and c.source
        for arch in c.architectures:
            get_model_info(arch)  # raises for a name the zoo does not have


def test_claims_must_be_fractions_with_unique_ids(tmp_path):
    from artifacts.configuration import ConfigError

    bad = tmp_path / "c.yaml"
    bad.write_text("claims:\n  - {id: a, source: S, model: M, accuracy: 93, architectures: []}\n")
    with pytest.raises(ConfigError, match="fraction"):
        comparison.load_claims(bad)
    bad.write_text("claims:\n  - {id: a, source: S, model: M, accuracy: 0.9}\n"
                   "  - {id: a, source: T, model: N, accuracy: 0.8}\n")
    with pytest.raises(ConfigError, match="twice"):
        comparison.load_claims(bad)
    bad.write_text("claims:\n  - {id: a, source: S, accuracy: 0.9, paper_year: 2020}\n")
    with pytest.raises(ConfigError, match="claim 1"):
        comparison.load_claims(bad)


def test_a_directory_without_a_finished_run_is_one_line_error(tmp_path, capsys):
    from jobs import cli

    assert cli.main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no finished grid run" in capsys.readouterr().err
    assert cli.main(["compare", "--out", str(tmp_path / "o")]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_a_hostile_current_pointer_is_refused(tmp_path):
    # The grid's directory names its run in CURRENT; a pointer is an id, never a path out.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "grid_summary.json").write_text(json.dumps({"leaderboard": []}))
    grid_dir = tmp_path / "store" / "tune" / "g"
    grid_dir.mkdir(parents=True)
    (grid_dir / "CURRENT").write_text("../../../outside\n")
    with pytest.raises(ValueError, match="invalid artifact id"):
        comparison.read_run(str(grid_dir))
