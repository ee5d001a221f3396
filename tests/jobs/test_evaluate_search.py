"""evaluate-search: the metrics against hand-computed and obvious implementations, then end to end."""

import json

import numpy as np
import pytest

from artifacts import storage
from artifacts.configuration import load_config
from artifacts.hnsw_index import l2_normalise
from jobs.evaluate_search import EvaluateSearchConfig, category_classes, exact_metrics, ranking_metrics


def slow_metrics(scores, relevant, k, n_relevant):
    """The definition, one query and one item at a time."""
    aps, pks = [], []
    for s, rel, r in zip(scores, relevant, n_relevant):
        ranking = sorted(range(len(s)), key=lambda i: (-s[i], i))
        hits, total = 0, 0.0
        for rank, i in enumerate(ranking, start=1):
            if rel[i]:
                hits += 1
                total += hits / rank
        aps.append(total / r if r else float("nan"))
        pks.append(sum(bool(rel[i]) for i in ranking[:k]) / k)
    return np.array(aps), np.array(pks)


def test_hand_computed_example():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5],
                       [0.1, 0.5, 0.5, 0.4, 0.3]])
    relevant = np.array([[1, 0, 1, 0, 0],
                         [0, 0, 1, 0, 1]], bool)
    ap, p2 = ranking_metrics(scores, relevant, k=2)
    # Row 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2. Row 1: the tie 0.5/0.5 goes to column 1
    # first, so hits at ranks 2 and 4 -> (1/2 + 2/4) / 2.
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 2, (1 / 2 + 2 / 4) / 2])
    np.testing.assert_allclose(p2, [0.5, 0.5])
    # A relevant item outside the ranking (filtered out) stays in the denominator.
    ap, _ = ranking_metrics(scores[:1], relevant[:1], k=2, n_relevant=np.array([3]))
    np.testing.assert_allclose(ap, [(1 + 2 / 3) / 3])
    # Nothing retrieved, or nothing relevant anywhere.
    ap, pk = ranking_metrics(np.zeros((2, 0)), np.zeros((2, 0), bool), k=10, n_relevant=np.array([4, 0]))
    assert ap[0] == 0 and np.isnan(ap[1]) and (pk == 0).all()
    # A list shorter than k: missing places are not relevant.
    _, p10 = ranking_metrics(scores[:1], relevant[:1], k=10)
    assert p10[0] == pytest.approx(0.2)


def test_matches_the_obvious_implementation_with_ties():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((40, 120)), 1)  # many ties
    relevant = rng.random((40, 120)) < 0.2
    n_relevant = relevant.sum(axis=1) + rng.integers(0, 3, 40)
    ap, pk = ranking_metrics(scores, relevant, k=10, n_relevant=n_relevant)
    slow_ap, slow_pk = slow_metrics(scores, relevant, 10, n_relevant)
    np.testing.assert_allclose(ap, slow_ap, equal_nan=True)
    np.testing.assert_allclose(pk, slow_pk)


def test_matches_sklearn_without_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    scores = rng.random((20, 300))
    relevant = rng.random((20, 300)) < 0.3
    ap, _ = ranking_metrics(scores, relevant)
    np.testing.assert_allclose(ap, [average_precision_score(r, s) for r, s in zip(relevant, scores)])


def test_exact_metrics_filtered_and_unfiltered():
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 4, 500)
    catalogue = l2_normalise(rng.normal(size=(4, 16))[classes] + rng.normal(size=(500, 16)))
    labels = rng.integers(0, 4, 60)
    queries = l2_normalise(rng.normal(size=(4, 16))[labels] + rng.normal(size=(60, 16)))
    predicted = np.where(rng.random(60) < 0.7, labels, (labels + 1) % 4)
    classes[:5] = -1  # uncategorised items are never relevant, never in a filtered list
    out = exact_metrics(queries, labels, predicted, catalogue, classes, k=10, chunk=7, threads=2)
    sims = queries @ catalogue.T
    n_rel = np.array([(classes == y).sum() for y in labels])
    slow_ap, slow_pk = slow_metrics(sims, classes[None] == labels[:, None], 10, n_rel)
    np.testing.assert_allclose(out["ap"], slow_ap, rtol=1e-6)
    np.testing.assert_allclose(out["p_at_k"], slow_pk)
    # Filtered: excluded items are simply not in the ranking (score -inf and not relevant).
    keep = classes[None] == predicted[:, None]
    f_ap, f_pk = slow_metrics(np.where(keep, sims, -np.inf), (classes[None] == labels[:, None]) & keep, 10, n_rel)
    np.testing.assert_allclose(out["ap_filtered"], f_ap, rtol=1e-6)
    np.testing.assert_allclose(out["p_at_k_filtered"], f_pk)
    # With relevance = class, classify-then-filter AP is 1 for a right guess and 0 for a wrong one.
    np.testing.assert_allclose(out["ap_filtered"], (predicted == labels).astype(float))
    top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(out["top"], top)
    assert (classes[out["top_filtered"]] == predicted[:, None]).all()


def test_category_names_match_class_names_loosely():
    names = ["T-shirt/top", "Trouser", "Ankle boot"]
    assert category_classes(["T-shirt/top", "t-shirt_top", "ankle-boot", "TROUSER", "hats"], names) == {
        "T-shirt/top": 0, "t-shirt_top": 0, "ankle-boot": 2, "TROUSER": 1, "hats": -1}


@pytest.fixture(scope="module")
def tiny_setup(tiny_fashion_mnist, tmp_path_factory):
    """A random-weight cnn_dropout_1 model and an index of its embeddings of the tiny train split
    (the catalogue; categories spelled as a folder catalogue would spell them)."""
    import keras

    from artifacts import model_artifact, publish
    from artifacts.hnsw_index import MANIFEST, HnswIndex
    from artifacts.model_card import ModelCard
    from artifacts.preprocess import PreprocessSpec, arrays_to_model_input
    from tune.data import fashion_mnist
    from tune.models import build_model

    keras.utils.set_random_seed(0)
    root = str(tmp_path_factory.mktemp("store"))
    spec = PreprocessSpec()
    card = ModelCard(model_id="cnn-rand", architecture="cnn_dropout_1", class_names=list(fashion_mnist.CLASS_NAMES),
                     input_shape=[28, 28, 1], preprocessing=spec.to_dict(), embedding_layer="embedding",
                     embedding_dim=128)
    model_artifact.save(build_model("cnn_dropout_1"), card, model_artifact.models_root(root))
    ds = fashion_mnist.load(str(tiny_fashion_mnist))
    emb_model = model_artifact.load(model_artifact.models_root(root)).embedding_model()
    emb, _ = emb_model.predict(arrays_to_model_input(ds.train_images, spec), verbose=0)
    cats = [fashion_mnist.CLASS_NAMES[y].replace("/", "_").replace(" ", "_") for y in ds.train_labels]
    index = HnswIndex.build([f"train-{i:05d}" for i in range(len(cats))], cats, l2_normalise(emb), exact_below=10)
    indexes = storage.join(root, "indexes")
    index.save(storage.join(indexes, "idx-1"), index_id="idx-1", model_id="cnn-rand")
    publish.publish(indexes, "idx-1", manifest_name=MANIFEST)
    built = storage.join(indexes, "idx-1")
    return root, built, ds


def test_evaluate_search_end_to_end(tiny_setup, tiny_fashion_mnist):
    from jobs import evaluate_search

    root, built, ds = tiny_setup
    config = load_config(EvaluateSearchConfig, values={"storage": root, "data": str(tiny_fashion_mnist), "threads": 2,
                                                       "chunk": 64})
    r = evaluate_search.run(config)
    assert r["model_id"] == "cnn-rand" and r["index_id"] == "idx-1"
    assert r["queries"] == len(ds.test_labels) == 200 and r["catalogue_items"] == 600
    assert r["unmapped_categories"] == [] and r["queries_without_relevant"] == 0
    for key in ("no_filter", "classify_then_filter"):
        assert 0.0 <= r["exact"][key]["map"] <= 1.0 and 0.0 <= r["exact"][key]["precision_at_k"] <= 1.0
        assert r["hnsw"][key]["recall_at_k"] >= 0.95
        assert r["hnsw"][key]["precision_at_k"] == pytest.approx(r["exact"][key]["precision_at_k"], abs=0.02)
    # Relevance is the class, so with the filter mAP and precision@10 are the classifier's accuracy.
    acc = r["classification_accuracy"]
    assert r["exact"]["classify_then_filter"]["map"] == pytest.approx(acc)
    assert r["exact"]["classify_then_filter"]["precision_at_k"] == pytest.approx(acc)
    md = storage.read_text(storage.join(r["out"], "search_eval.md"))
    assert "| all categories |" in md and "| classify-then-filter (predicted class) |" in md
    saved = json.loads(storage.read_text(storage.join(r["out"], "search_eval.json")))
    assert saved["exact"] == r["exact"] and saved["config"]["threads"] == 2


def test_cli_subset_and_model_mismatch(tiny_setup, tiny_fashion_mnist, tmp_path, capsys):
    from jobs import evaluate_search

    root, built, _ = tiny_setup
    rc = evaluate_search.main(["--storage", root, "--model", f"{root}/models", "--index", built,
                               "--data", str(tiny_fashion_mnist), "--queries", "50", "--out", str(tmp_path / "ev"),
                               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["queries"] == 50 and (tmp_path / "ev" / "search_eval.md").exists()
    manifest_path = storage.join(built, "index_manifest.json")
    manifest = json.loads(storage.read_text(manifest_path))
    storage.write_text(manifest_path, json.dumps({**manifest, "model_id": "another-model"}))
    try:
        with pytest.raises(ValueError, match="built from model another-model"):
            evaluate_search.run(load_config(EvaluateSearchConfig, values={"storage": root,
                                                                          "data": str(tiny_fashion_mnist)}))
    finally:
        storage.write_text(manifest_path, json.dumps(manifest))
