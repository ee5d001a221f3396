"""Retrieval quality of a model + index: mAP and precision@10, with and without classify-then-filter.

    vitrine evaluate-search                                   # LATEST model and LATEST index
    vitrine evaluate-search --model .vitrine/models/<model_id> --index .vitrine/indexes --json
    vitrine evaluate-search --model s3://bucket/vitrine/models --index s3://bucket/vitrine/indexes \\
        --data s3://bucket/datasets/fashion-mnist --queries 1000
    python -m jobs.evaluate_search --model ... --index ... --set threads=2

Queries are the Fashion-MNIST TEST images, preprocessed with the model card's spec
(:func:`artifacts.preprocess.arrays_to_model_input`), embedded with the model's ``embedding``
layer and L2-normalised. The catalogue is what the index holds (the TRAIN images, embedded by
the nightly job). A catalogue item is *relevant* to a query when its catalogue category is the
query's true class (category strings are matched to the card's class names ignoring case and
punctuation, so ``T-shirt/top`` and ``t-shirt_top`` agree).

Metrics, over ``n`` queries (``--queries N``: a seeded random subset; default all 10,000):

* **Ranking.** The catalogue sorted by descending cosine similarity (exact, numpy), ties broken
  by the item's position in the index. Without filter the ranking holds every item.
* **Classify-then-filter** (as the published visual-search system did): the ranking keeps only
  the items whose category is the query's *predicted* class (arg-max of the model's output);
  everything else is not retrieved.
* **AP** of a query = (1/R) * sum over relevant retrieved items of precision at that item's rank,
  where **R counts every relevant item in the catalogue**, retrieved or not. Relevant items the
  filter removed count as never retrieved: they add nothing to the sum but stay in R. So a
  misclassified query has AP = 0 with the filter; and since relevance here is "same class", a
  correctly classified one has AP = 1 (every retrieved item is relevant): with the filter, mAP
  equals the classifier's accuracy on the queries, which the result reports next to it.
  Queries with R = 0 (their class is absent from the catalogue) are left out of the mean and
  counted. **mAP** = mean AP.
* **precision@10** = relevant items among the first 10 of the ranking / 10 (a filtered ranking
  shorter than 10 counts the missing places as not relevant).
  Also at k = 1, 5, 10, 30 (``precision_at``), from the same exact rankings.
* **Per class**: AP, precision@k and classify-then-filter AP averaged over the queries of each
  true class.
* **HNSW**: the same queries through the index (unfiltered, and restricted to the predicted
  class's category), giving the precision@10 users are served and recall@10 against the exact
  top 10 (an item tied with the exact 10th counts as found).

Pictures (``--set figures=false`` to skip; :mod:`tune.search_report` draws them): a retrieval
gallery (``gallery_queries`` test queries, one class after another, each with its exact top
``gallery_results``, a red outline on results of another class; the catalogue images are read
through the image URIs of the embeddings run the index was built from), precision@k against k,
per-class AP, and a 2-D map of ``map_points`` catalogue embeddings coloured by class
(``map_method=pca``, numpy; ``tsne`` (scikit-learn) takes tens of seconds more).

Cost: one chunked matrix product and one stable sort per query over the whole catalogue;
10,000 x 60,000 takes about a minute on 2 CPUs (``threads`` = worker threads over chunks).
Writes ``search_eval.md`` (a table for docs/RESULTS.md, then the per-k and per-class tables and
the pictures), ``search_eval.json`` and the PNGs under ``out`` (default
``<storage>/evaluations/search/<index_id>/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from artifacts.logs import setup_logging
from tune.search_report import PRECISION_KS
from jobs import flags

log = logging.getLogger("vitrine.evaluate_search")


@dataclass(frozen=True)
class EvaluateSearchConfig:
    model: str = ""  # model dir or models/ dir (LATEST); default <storage>/models
    index: str = ""  # index dir or indexes/ dir (LATEST); default <storage>/indexes
    data: str = ""  # Fashion-MNIST directory or s3:// prefix; default $FASHION_MNIST_DIR
    storage: str = ""  # default $VITRINE_STORAGE or ./.vitrine
    queries: int = 0  # 0 = the whole test split
    k: int = 10
    seed: int = 0
    chunk: int = 128  # queries per exact-ranking chunk (memory ~ chunk x items x 13 bytes per thread)
    threads: int = 0  # 0 = one per CPU
    out: str = ""  # directory for search_eval.md/json; default <storage>/evaluations/search/<index_id>
    allow_model_mismatch: bool = False  # evaluate even if the index was built from another model
    figures: bool = True  # retrieval gallery, precision@k, per-class AP and embedding-map PNGs
    gallery_queries: int = 8  # gallery rows: queries of distinct classes in turn, seeded
    gallery_results: int = 10
    map_points: int = 5000  # catalogue items on the embedding map (a seeded sample)
    map_method: str = "pca"  # pca (numpy, instant) or tsne (scikit-learn, tens of seconds)


# ---------------------------------------------------------------- metrics
def ranking_metrics(scores: np.ndarray, relevant: np.ndarray, *, k: int = 10,
                    n_relevant: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(average_precision, precision_at_k)`` per row.

    ``scores`` ``(q, n)``: similarities of the retrieved items (the columns); ``relevant``
    ``(q, n)`` bool. Ranking: descending score, ties by column. ``n_relevant`` ``(q,)``: the AP
    denominator, all relevant items including ones not among the columns (default: the
    relevant columns). AP is NaN where that is 0.
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=bool)
    q, n = scores.shape
    if n_relevant is None:
        n_relevant = relevant.sum(axis=1)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if n == 0:
        ap = np.where(n_relevant > 0, 0.0, np.nan)
        return ap, np.zeros(q)
    order = np.argsort(-scores, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(relevant, order, axis=1)
    rows, cols = np.nonzero(rel_sorted)  # row-major: each row's hits in rank order
    row_start = np.concatenate([[0], np.cumsum(rel_sorted.sum(axis=1))[:-1]])
    hits_so_far = np.arange(len(rows)) - row_start[rows] + 1
    sums = np.bincount(rows, weights=hits_so_far / (cols + 1.0), minlength=q)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_relevant > 0, sums / n_relevant, np.nan)
    p_at_k = rel_sorted[:, :k].sum(axis=1) / float(k)
    return ap, p_at_k


def _norm_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def category_classes(categories: list[str], class_names: list[str]) -> dict[str, int]:
    """Catalogue category → class index, matching names ignoring case and punctuation."""
    exact = {c: i for i, c in enumerate(class_names)}
    loose = {_norm_name(c): i for i, c in enumerate(class_names)}
    return {c: exact.get(c, loose.get(_norm_name(c), -1)) for c in categories}


# ---------------------------------------------------------------- the job
def _embed(runner, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings and probabilities of uint8 test images through the model's one forward pass
    (:class:`artifacts.inference.ModelRunner`): the serving path, for a float model or a variant."""
    from tune.evaluation import runner_outputs

    out = runner_outputs(runner, images)
    return out.embeddings, out.probabilities


def exact_metrics(queries: np.ndarray, labels: np.ndarray, predicted: np.ndarray, catalogue: np.ndarray,
                  item_classes: np.ndarray, *, k: int = 10, chunk: int = 128, threads: int = 0,
                  depth: int = 0) -> dict:
    """Per-query exact AP and P@k, unfiltered and classify-then-filter, plus both exact top-k.

    ``queries`` ``(q, d)`` and ``catalogue`` ``(n, d)`` unit vectors; ``labels``/``predicted``
    the queries' true and predicted class indices; ``item_classes`` each item's class (-1 =
    none). Returns arrays keyed ``ap``, ``p_at_k``, ``ap_filtered``, ``p_at_k_filtered``,
    ``top`` and ``top_filtered`` (positions, -1 padded), ``top_sims`` and ``top_sims_filtered``;
    and, ``D = max(k, depth)`` results deep, ``top_long``/``top_long_filtered`` (positions) and
    ``rel_top``/``rel_top_filtered`` (whether each is relevant), for precision@k at several k.
    """
    from artifacts.vector_search import top_k

    q = len(queries)
    deep = max(k, depth)
    class_count = np.bincount(item_classes[item_classes >= 0], minlength=int(max(labels.max(initial=0),
                                                                                    predicted.max(initial=0)) + 1))
    n_relevant = class_count[labels]
    members = {c: np.flatnonzero(item_classes == c) for c in np.unique(predicted)}
    out = {name: np.full(q, np.nan) for name in ("ap", "p_at_k", "ap_filtered", "p_at_k_filtered")}
    for name in ("top", "top_filtered"):
        out[name.replace("top", "top_long")] = np.full((q, deep), -1, np.int64)
        out[name.replace("top", "top_sims")] = np.full((q, k), -np.inf, np.float32)

    def work(start: int) -> None:
        sl = slice(start, min(start + chunk, q))
        sims = queries[sl] @ catalogue.T
        relevant = item_classes[None, :] == labels[sl, None]
        out["ap"][sl], out["p_at_k"][sl] = ranking_metrics(sims, relevant, k=k, n_relevant=n_relevant[sl])
        cols, vals = top_k(sims, deep)
        out["top_long"][sl, :cols.shape[1]], out["top_sims"][sl, :min(k, cols.shape[1])] = cols, vals[:, :k]
        for c in np.unique(predicted[sl]):
            rows = np.flatnonzero(predicted[sl] == c)
            cols_c = members[c]
            sub = sims[rows][:, cols_c]
            ap, pk = ranking_metrics(sub, relevant[rows][:, cols_c], k=k, n_relevant=n_relevant[sl][rows])
            idx = np.arange(sl.start, sl.stop)[rows]
            out["ap_filtered"][idx], out["p_at_k_filtered"][idx] = ap, pk
            tc, tv = top_k(sub, deep)
            out["top_long_filtered"][idx, :tc.shape[1]] = cols_c[tc]
            out["top_sims_filtered"][idx, :min(k, tc.shape[1])] = tv[:, :k]

    threads = threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy sorts and BLAS release the GIL
        list(pool.map(work, range(0, q, chunk)))
    for suffix in ("", "_filtered"):
        top = out["top_long" + suffix]
        out["top" + suffix] = top[:, :k]
        out["rel_top" + suffix] = (top >= 0) & (item_classes[np.maximum(top, 0)] == labels[:, None])
    return out


def run(config: EvaluateSearchConfig) -> dict:
    """Evaluate; returns the result dict and writes ``search_eval.{md,json}`` (and, with
    ``figures``, the PNGs the Markdown links) under ``out``."""
    from artifacts import storage
    from tune import search_report

    t0 = time.time()
    root = config.storage or storage.default_root()
    runner, index, mapping, item_classes = _model_and_index(config, root)
    card, manifest = runner.card, index.manifest
    ds, picks, labels = _test_queries(config, card)
    t_embed = time.time()
    queries, probs = _embed(runner, ds.test_images[picks])
    predicted = probs.argmax(axis=1).astype(np.int64)
    t_exact = time.time()
    log.info("embedded %d test queries in %.1f s; ranking %d catalogue items exactly", len(picks),
             t_exact - t_embed, len(index))
    ex = exact_metrics(queries, labels, predicted, index.vectors, item_classes, k=config.k, chunk=config.chunk,
                       threads=config.threads, depth=max(PRECISION_KS + (config.gallery_results,)))
    t_hnsw = time.time()
    hnsw = _hnsw_metrics(index, queries, labels, predicted, mapping, item_classes, ex, config.k)
    result = _result(config, runner, index, ds, picks, labels, predicted, ex, hnsw, mapping)
    result["seconds"] = {"load_and_embed": round(t_exact - t0, 2), "exact": round(t_hnsw - t_exact, 2),
                         "hnsw": round(time.time() - t_hnsw, 2), "total": round(time.time() - t0, 2)}
    curves = {key: search_report.precision_curve(ex["rel_top" + suffix])
              for key, suffix in (("no_filter", ""), ("classify_then_filter", "_filtered"))}
    for key, curve in curves.items():
        result["exact"][key]["precision_at"] = {str(n): float(curve[n - 1]) for n in PRECISION_KS}
    out = config.out or storage.join(root, "evaluations", "search", manifest.index_id or "index")
    if config.figures and len(picks):
        t_fig = time.time()
        result["figures"] = search_report.write_figures(
            out, index=index, class_names=list(card.class_names), item_classes=item_classes,
            query_images=ds.test_images[picks], labels=labels, predicted=predicted, top=ex["top_long"],
            curves=curves, per_class_rows=result["per_class"], gallery_queries=config.gallery_queries,
            gallery_results=config.gallery_results, map_points=config.map_points, map_method=config.map_method,
            seed=config.seed)
        result["seconds"]["figures"] = round(time.time() - t_fig, 2)
        result["seconds"]["total"] = round(time.time() - t0, 2)
    result["markdown"] = markdown_report(result)
    storage.write_text(storage.join(out, "search_eval.json"), json.dumps(result, indent=2, default=str) + "\n")
    storage.write_text(storage.join(out, "search_eval.md"), result["markdown"])
    result["out"] = out
    log.info("search evaluation written to %s in %.1f s", out, time.time() - t0)
    return result


def _model_and_index(config: EvaluateSearchConfig, root: str):
    """``(model runner, index, category -> class, each item's class)``, checked to belong together."""
    from artifacts import model_artifact
    from artifacts.hnsw_index import HnswIndex
    from artifacts.index_manifest import indexes_root
    from artifacts.inference import ModelRunner

    runner = ModelRunner(config.model or model_artifact.models_root(root))
    card = runner.card
    index = HnswIndex.load(config.index or indexes_root(root), expected_dim=card.embedding_dim)
    manifest = index.manifest
    if manifest.model_id and manifest.model_id != card.model_id and not config.allow_model_mismatch:
        raise ValueError(f"index {manifest.index_id} was built from model {manifest.model_id}'s embeddings, not "
                         f"{card.model_id}; pass the matching model (or --set allow_model_mismatch=true)")
    mapping = category_classes(index.category_names, list(card.class_names))
    unmapped = sorted(c for c, i in mapping.items() if i < 0)
    if len(unmapped) == len(mapping):
        raise ValueError(f"none of the index categories ({', '.join(index.category_names[:10])}) match the model's "
                         f"classes ({', '.join(card.class_names)})")
    if unmapped:
        log.warning("index categories with no matching class (never relevant): %s", ", ".join(unmapped))
    code_class = np.array([mapping[c] for c in index.category_names] + [-1], dtype=np.int64)
    return runner, index, mapping, code_class[index.category_codes]  # code -1 picks the trailing -1


def _test_queries(config: EvaluateSearchConfig, card):
    """``(dataset, picked test rows, their labels)``: every test image, or a seeded sample."""
    from tune.data import fashion_mnist

    ds = fashion_mnist.load(config.data or None)
    picks = np.arange(len(ds.test_labels))
    if config.queries and config.queries < len(picks):
        picks = np.sort(np.random.default_rng(config.seed).choice(picks, size=config.queries, replace=False))
    labels = ds.test_labels[picks].astype(np.int64)
    if labels.size and labels.max() >= len(card.class_names):
        raise ValueError(f"test labels go up to {labels.max()} but the model has {len(card.class_names)} classes")
    return ds, picks, labels


def _hnsw_metrics(index, queries, labels, predicted, mapping: dict, item_classes, ex: dict, k: int) -> dict:
    """The served path: HNSW, unfiltered and restricted to the predicted class's category."""
    from artifacts.vector_search import recall_at_k

    class_categories: dict[int, list[str]] = {}
    for name, i in mapping.items():
        if i >= 0:
            class_categories.setdefault(i, []).append(name)
    h_top, _ = index.search_positions(queries, k)
    hf_top = np.full((len(queries), k), -1, np.int64)
    for c in np.unique(predicted):
        rows = np.flatnonzero(predicted == c)
        if int(c) in class_categories:
            hf_top[rows] = index.search_positions(queries[rows], k, class_categories[int(c)])[0]

    def stats(top: np.ndarray, exact_sims: np.ndarray) -> dict:
        sims = np.einsum("qd,qkd->qk", queries, index.vectors[np.maximum(top, 0)])
        rel = (top >= 0) & (item_classes[np.maximum(top, 0)] == labels[:, None])
        return {"precision_at_k": float(rel.sum(axis=1).mean() / k), "recall_at_k": recall_at_k(top, exact_sims, sims)}

    return {"no_filter": stats(h_top, ex["top_sims"]), "classify_then_filter": stats(hf_top, ex["top_sims_filtered"])}


def _result(config, runner, index, ds, picks, labels, predicted, ex: dict, hnsw: dict, mapping: dict) -> dict:
    from artifacts.configuration import to_dict
    from tune import search_report

    card, manifest = runner.card, index.manifest
    valid = ~np.isnan(ex["ap"])
    return {
        "model_id": card.model_id, "model_uri": runner.uri, "index_id": manifest.index_id,
        "index_uri": getattr(index, "uri", ""), "index_model_id": manifest.model_id, "data_source": ds.source,
        "queries": int(len(picks)), "catalogue_items": int(len(index)), "k": config.k,
        "classification_accuracy": float((predicted == labels).mean()) if len(picks) else float("nan"),
        "exact": {
            "no_filter": {"map": float(np.nanmean(ex["ap"])) if valid.any() else float("nan"),
                          "precision_at_k": float(ex["p_at_k"].mean())},
            "classify_then_filter": {"map": float(np.nanmean(ex["ap_filtered"])) if valid.any() else float("nan"),
                                     "precision_at_k": float(ex["p_at_k_filtered"].mean())},
        },
        "per_class": search_report.per_class(labels, list(card.class_names), {
            "ap": ex["ap"], "ap_filtered": ex["ap_filtered"], "precision_at_k": ex["p_at_k"]}),
        "hnsw": hnsw,
        "index_params": manifest.params,
        "queries_without_relevant": int((~valid).sum()),
        "unmapped_categories": sorted(c for c, i in mapping.items() if i < 0),
        "config": to_dict(config),
    }


def markdown_report(r: dict) -> str:
    """:func:`markdown_table`, then precision@k, per-class AP and the pictures."""
    from tune import search_report

    return markdown_table(r).rstrip("\n") + "\n\n" + "\n".join(search_report.markdown_sections(r)) + "\n"


def markdown_table(r: dict) -> str:
    """The result as a Markdown snippet for docs/RESULTS.md."""
    k = r["k"]
    lines = [
        f"Visual search: model `{r['model_id']}`, index `{r['index_id']}` "
        f"(M={r['index_params'].get('M')}, ef={r['index_params'].get('ef')}); {r['queries']:,} Fashion-MNIST test "
        f"queries against {r['catalogue_items']:,} catalogue items; relevant = same class. "
        f"Classifier accuracy on these queries: {r['classification_accuracy']:.4f}.",
        "",
        f"| Results | mAP (exact, full ranking) | precision@{k} (exact) | precision@{k} (HNSW) "
        f"| HNSW recall@{k} vs exact |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("no_filter", "all categories"),
                       ("classify_then_filter", "classify-then-filter (predicted class)")):
        e, h = r["exact"][key], r["hnsw"][key]
        lines.append(f"| {label} | {e['map']:.4f} | {e['precision_at_k']:.4f} | {h['precision_at_k']:.4f} | "
                     f"{h['recall_at_k']:.4f} |")
    lines += ["", "With classify-then-filter, relevant items outside the predicted class count as not retrieved "
              "(AP denominator = all relevant items in the catalogue), so its mAP equals the classifier's accuracy "
              "when relevance is the class.", ""]
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="vitrine evaluate-search", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model dir or models/ dir with LATEST (default <storage>/models)")
    p.add_argument("--index", help="index dir or indexes/ dir with LATEST (default <storage>/indexes)")
    p.add_argument("--data", help="Fashion-MNIST directory or s3:// prefix (default $FASHION_MNIST_DIR)")
    flags.add_storage(p)
    p.add_argument("--queries", type=int, help="number of test queries, a seeded random subset (default all)")
    p.add_argument("--out", help="directory for search_eval.md / search_eval.json")
    p.add_argument("--config", help="YAML file with EvaluateSearchConfig keys")
    flags.add_overrides(p)
    flags.add_json(p, "print the result as JSON instead of the table")
    return p


def main(argv: list[str] | None = None) -> int:
    from artifacts.configuration import load_config

    args = build_parser().parse_args(argv)
    setup_logging()
    values = {"model": args.model, "index": args.index, "data": args.data, "storage": args.storage,
              "queries": args.queries, "out": args.out}
    result = run(load_config(EvaluateSearchConfig, yaml_path=args.config, overrides=args.overrides, values=values))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2, default=str))
    else:
        print(result["markdown"])
        print(f"written to {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
