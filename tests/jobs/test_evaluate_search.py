"""evaluate-search: the metrics against hand-computed and obvious implementations, then end to end."""

import json

import numpy as np
import pytest

from artifacts import storage
from artifacts.configuration import load_config
from artifacts.vector_search import l2_normalise
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


def test_precision_at_several_k_and_per_class_ap_by_brute_force():
    from tune import search_report

    # Hand-made: query 0's top 3 are relevant, wrong, relevant; query 1's list has one result.
    rel = np.array([[1, 0, 1], [1, 0, 0]], bool)
    np.testing.assert_allclose(search_report.precision_curve(rel), [(1 + 1) / 2, (1 / 2 + 1 / 2) / 2,
                                                                    (2 / 3 + 1 / 3) / 2])

    rng = np.random.default_rng(3)
    classes = rng.integers(0, 3, 200)
    catalogue = l2_normalise(rng.normal(size=(3, 8))[classes] + rng.normal(size=(200, 8)))
    labels = rng.integers(0, 3, 40)
    queries = l2_normalise(rng.normal(size=(3, 8))[labels] + rng.normal(size=(40, 8)))
    predicted = np.where(rng.random(40) < 0.6, labels, (labels + 1) % 3)
    out = exact_metrics(queries, labels, predicted, catalogue, classes, k=10, chunk=9, threads=2, depth=30)
    curve = search_report.precision_curve(out["rel_top"])
    sims = queries @ catalogue.T
    n_rel = np.array([(classes == y).sum() for y in labels])
    for k in (1, 5, 10, 30):
        _, slow_pk = slow_metrics(sims, classes[None] == labels[:, None], k, n_rel)
        assert curve[k - 1] == pytest.approx(slow_pk.mean())
    assert curve[9] == pytest.approx(out["p_at_k"].mean())  # the same P@10 the table reports
    keep = classes[None] == predicted[:, None]
    _, f_p5 = slow_metrics(np.where(keep, sims, -np.inf), (classes[None] == labels[:, None]) & keep, 5, n_rel)
    assert search_report.precision_curve(out["rel_top_filtered"])[4] == pytest.approx(f_p5.mean())

    rows = search_report.per_class(labels, ["a", "b", "c", "never queried"], {"ap": out["ap"]})
    assert [r["class"] for r in rows] == ["a", "b", "c"]
    slow_ap, _ = slow_metrics(sims, classes[None] == labels[:, None], 10, n_rel)
    for c, row in enumerate(rows):
        assert row["queries"] == (labels == c).sum()
        assert row["ap"] == pytest.approx(np.mean([a for a, y in zip(slow_ap, labels) if y == c]))


def test_pca_map_and_gallery_queries():
    from tune import search_report

    rng = np.random.default_rng(4)
    # Points on a line in 5-D plus a little noise: PC1 holds nearly all the variance, and the
    # first coordinate is the position along the line (up to sign).
    t = rng.normal(size=300)
    x = np.outer(t, [1, 2, 0, 0, 1]) + 0.01 * rng.normal(size=(300, 5))
    xy, ratio = search_report.pca_2d(x)
    assert xy.shape == (300, 2) and ratio[0] > 0.99
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.999
    _, caption = search_report.embedding_map(x, "pca")
    assert caption.startswith("PCA")
    with pytest.raises(ValueError, match="unknown map_method"):
        search_report.embedding_map(x, "umap")

    labels = np.array([2, 0, 0, 1, 2, 0, 0])
    rows = search_report.pick_gallery_queries(labels, 5, seed=0)
    assert list(labels[rows]) == [0, 1, 2, 0, 2] and len(set(rows.tolist())) == 5
    assert len(search_report.pick_gallery_queries(labels, 50)) == len(labels)  # never repeats a query


def _red_pixels(png: bytes) -> int:
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)).sum())


def test_gallery_outlines_only_wrong_results_in_red():
    from PIL import Image

    from tune import search_report

    tile = np.tile(np.linspace(0, 255, 28, dtype=np.uint8), (28, 1))

    def gallery(wrong):
        return search_report.gallery_png([{"query": tile, "title": "query: Bag", "results": [
            {"image": tile, "label": "Bag", "wrong": False}, {"image": None, "label": "Bag", "wrong": False},
            {"image": np.stack([tile] * 3, axis=-1), "label": "Coat" if wrong else "Bag", "wrong": wrong}]}])

    right, wrong = gallery(False), gallery(True)
    assert right.startswith(b"\x89PNG") and Image.open(__import__("io").BytesIO(right)).size[0] > 300
    assert _red_pixels(right) == 0 and _red_pixels(wrong) > 100


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
    from artifacts.hnsw_index import HnswIndex
    from artifacts.index_manifest import MANIFEST
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

    # precision@k at 1, 5, 10, 30: the P@10 of the table, never rising above 1; with the filter
    # every result is the predicted class, so P@k is the accuracy at every k (each class has
    # more than 30 catalogue items).
    for key in ("no_filter", "classify_then_filter"):
        p_at = r["exact"][key]["precision_at"]
        assert list(p_at) == ["1", "5", "10", "30"]
        assert p_at["10"] == pytest.approx(r["exact"][key]["precision_at_k"])
    assert r["exact"]["classify_then_filter"]["precision_at"]["30"] == pytest.approx(acc)
    # Per class: weighted by queries, the class means give back the overall ones.
    rows = r["per_class"]
    counts = np.array([row["queries"] for row in rows])
    assert counts.sum() == 200 and saved["per_class"] == rows
    for col, overall in (("ap", r["exact"]["no_filter"]["map"]), ("ap_filtered", acc),
                         ("precision_at_k", r["exact"]["no_filter"]["precision_at_k"])):
        assert np.dot(counts, [row[col] for row in rows]) / counts.sum() == pytest.approx(overall)
    assert "| Class | Queries | AP (all categories) |" in md and "| P@1 | P@5 | P@10 | P@30 |" in md

    # The pictures: valid PNGs, linked from the Markdown.
    from PIL import Image

    for name in ("retrieval_gallery.png", "precision_at_k.png", "per_class_ap.png", "embedding_map.png"):
        path = storage.join(r["out"], name)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            im.verify()
        assert f"]({name})" in md
    figures = r["figures"]
    assert figures["gallery_queries"] == 8 and len(set(ds.test_labels[figures["gallery_rows"]])) == 8
    assert figures["map_points"] == 600 and figures["embedding_map_caption"].startswith("PCA")


def test_cli_subset_and_model_mismatch(tiny_setup, tiny_fashion_mnist, tmp_path, capsys):
    from jobs import evaluate_search

    root, built, _ = tiny_setup
    rc = evaluate_search.main(["--storage", root, "--model", f"{root}/models", "--index", built,
                               "--data", str(tiny_fashion_mnist), "--queries", "50", "--out", str(tmp_path / "ev"),
                               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["queries"] == 50 and (tmp_path / "ev" / "search_eval.md").exists()
    assert (tmp_path / "ev" / "retrieval_gallery.png").exists()
    rc = evaluate_search.main(["--storage", root, "--index", built, "--data", str(tiny_fashion_mnist),
                               "--queries", "20", "--out", str(tmp_path / "bare"), "--set", "figures=false"])
    assert rc == 0 and not list((tmp_path / "bare").glob("*.png"))
    assert ".png)" not in (tmp_path / "bare" / "search_eval.md").read_text()
    capsys.readouterr()
    manifest_path = storage.join(built, "index_manifest.json")
    manifest = json.loads(storage.read_text(manifest_path))
    storage.write_text(manifest_path, json.dumps({**manifest, "model_id": "another-model"}))
    try:
        with pytest.raises(ValueError, match="built from model another-model"):
            evaluate_search.run(load_config(EvaluateSearchConfig, values={"storage": root,
                                                                          "data": str(tiny_fashion_mnist)}))
    finally:
        storage.write_text(manifest_path, json.dumps(manifest))
