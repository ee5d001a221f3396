"""Pictures and tables of a search evaluation (``jobs.evaluate_search``): the numbers behind them
and the PNGs (returned as bytes, so the job can write them to any storage URI)."""

from __future__ import annotations

import io
import logging

import numpy as np

from .report_figures import new_figure

PRECISION_KS = (1, 5, 10, 30)

log = logging.getLogger("vitrine.evaluate_search")


# ---------------------------------------------------------------- numbers
def precision_curve(rel_top: np.ndarray) -> np.ndarray:
    """Mean precision@k for k = 1..K from ``rel_top`` ``(q, K)``: whether each query's k-th result
    is relevant (a missing result, past the end of a filtered list, is not)."""
    rel_top = np.asarray(rel_top, dtype=bool)
    if rel_top.size == 0:
        return np.full(rel_top.shape[1], np.nan)
    return rel_top.cumsum(axis=1).mean(axis=0) / np.arange(1, rel_top.shape[1] + 1)


def per_class(labels: np.ndarray, class_names: list[str], columns: dict[str, np.ndarray]) -> list[dict]:
    """One row per class that has queries: ``queries`` and the mean of each per-query array in
    ``columns`` over that class's queries (NaN entries, queries without relevant items, skipped)."""
    rows = []
    for c, name in enumerate(class_names):
        mask = labels == c
        if not mask.any():
            continue
        row = {"class": name, "queries": int(mask.sum())}
        for key, values in columns.items():
            v = np.asarray(values, dtype=np.float64)[mask]
            row[key] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        rows.append(row)
    return rows


def pca_2d(vectors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """The first two principal components of ``vectors`` and the fraction of the variance each
    explains (numpy: eigenvectors of the ``d x d`` covariance, which for thousands of points is
    cheaper than an SVD of the points and gives the same axes)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    var, vecs = np.linalg.eigh(x.T @ x)
    order = np.argsort(var)[::-1][:2]
    total = var.sum() or 1.0
    return x @ vecs[:, order], [float(max(var[i], 0.0) / total) for i in order]


def embedding_map(vectors: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates of ``vectors`` and a caption naming the method. ``pca`` costs well under a
    second for thousands of points; ``tsne`` (scikit-learn) shows clusters better but takes tens of
    seconds on two CPUs, so it is opt-in."""
    if method == "pca":
        xy, ratio = pca_2d(vectors)
        return xy, f"PCA (numpy), PC1 {ratio[0]:.0%} and PC2 {ratio[1]:.0%} of the variance"
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as exc:
            raise ValueError("map_method=tsne needs scikit-learn; use map_method=pca") from exc
        xy = TSNE(n_components=2, init="pca", perplexity=30, random_state=seed).fit_transform(
            np.asarray(vectors, np.float32))
        return xy, "t-SNE (scikit-learn, perplexity 30, PCA init)"
    raise ValueError(f"unknown map_method {method!r}; one of pca, tsne")


# ---------------------------------------------------------------- figures
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def gallery_png(rows: list[dict]) -> bytes:
    """A retrieval gallery: one row per query, the query image then its results left to right.

    Each row: ``query`` (image array), ``title``, ``results`` (list of dicts with ``image`` (array
    or None: a grey placeholder), ``label`` and ``wrong`` (bool: a red outline)).
    """
    from matplotlib.patches import Rectangle

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n_cols = 1 + max((len(r["results"]) for r in rows), default=0)
    n_rows = max(len(rows), 1)
    # A fixed grid, not the constrained layout of the other figures: laying out ~90 axes that way
    # takes seconds, and every cell here has the same size anyway.
    fig = Figure(figsize=(1.15 * n_cols + 0.4, 1.35 * n_rows + 0.6), dpi=110)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={
        "left": 0.01, "right": 0.99, "bottom": 0.01, "top": 1 - 0.55 / (1.35 * n_rows + 0.6),
        "wspace": 0.08, "hspace": 0.38}))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    for i, row in enumerate(rows):
        cells = [(row["query"], row["title"], None)] + [(r["image"], r["label"], r["wrong"]) for r in row["results"]]
        for j, (img, label, wrong) in enumerate(cells):
            ax = axes[i, j]
            tile = None if img is None else np.asarray(img)
            if tile is None:
                ax.imshow(np.full((28, 28), 200, np.uint8), cmap="gray", vmin=0, vmax=255)
                ax.text(13.5, 13.5, "no image", ha="center", va="center", fontsize=6, color="0.3")
            else:
                ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(label, fontsize=6.5, color="red" if wrong else "black", pad=2)
            if wrong is None:  # the query: a blue frame
                colour, width = "tab:blue", 3.0
            else:
                colour, width = ("red", 3.0) if wrong else ("0.75", 0.8)
            h, w = (28, 28) if tile is None else tile.shape[:2]
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, edgecolor=colour, linewidth=width, clip_on=False))
    fig.suptitle("Retrieval gallery: query (blue) and its exact top results, best first; red outline = another class",
                 fontsize=9)
    return _png(fig)


def precision_png(curves: dict[str, np.ndarray], ks=PRECISION_KS) -> bytes:
    """Mean precision@k against k, one line per ranking; markers at ``ks``."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure((6.5, 4.2))
    ax = fig.subplots()
    for i, (label, curve) in enumerate(curves.items()):
        k = np.arange(1, len(curve) + 1)
        ax.plot(k, curve, color=f"C{i}", linewidth=1.6, label=label)
        at = [x for x in ks if x <= len(curve)]
        ax.plot(at, [curve[x - 1] for x in at], "o", color=f"C{i}", markersize=4)
        others = [c for j, c in enumerate(curves.values()) if j != i]
        for x in at:  # the top curve's value above its point, the others' below: close curves stay legible
            rivals = [c[x - 1] for c in others if len(c) >= x]
            top = not rivals or curve[x - 1] > max(rivals) or (i == 0 and curve[x - 1] == max(rivals))
            ax.annotate(f"{curve[x - 1]:.3f}", (x, curve[x - 1]), textcoords="offset points",
                        xytext=(0, 6 if top else -12), ha="center", fontsize=7, color=f"C{i}")
    finite = np.concatenate([np.asarray(c)[np.isfinite(c)] for c in curves.values()] or [np.zeros(0)])
    # Zoomed to the data (precision curves of a good model all sit near the top); never below 0.
    low = max(0.0, np.floor((finite.min() - 0.05) * 20) / 20) if finite.size else 0.0
    ax.set_xlabel("k (results)")
    ax.set_ylabel("mean precision@k")
    ax.set_ylim(low, 1.0 + 0.02 * (1.0 - low))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title("Precision@k (exact ranking; relevant = same class)")
    return _png(fig)


def per_class_ap_png(rows: list[dict], bars: dict[str, str]) -> bytes:
    """Grouped bars per class: ``bars`` maps a column of ``rows`` to its legend label."""
    names = [r["class"] for r in rows]
    x = np.arange(len(names))
    width = 0.8 / max(len(bars), 1)
    fig = new_figure((max(7.0, 0.8 * len(names) + 2.5), 4.6))
    ax = fig.subplots()
    for i, (key, label) in enumerate(bars.items()):
        values = [r[key] for r in rows]
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label, color=f"C{i}")
    ax.set_xticks(x, labels=names, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("AP (mean over the class's queries)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title("Per-class average precision")
    fig.legend(loc="outside upper right", ncol=len(bars), frameon=False, fontsize=8)
    return _png(fig)


def embedding_map_png(xy: np.ndarray, classes: np.ndarray, class_names: list[str], caption: str) -> bytes:
    """A scatter of 2-D points coloured by class (class -1: grey, "uncategorised")."""
    fig = new_figure((7.5, 6.5))
    ax = fig.subplots()
    cmap = "tab10" if len(class_names) <= 10 else "tab20"
    import matplotlib

    colours = matplotlib.colormaps[cmap]
    for c in np.unique(classes):
        mask = classes == c
        name = class_names[c] if 0 <= c < len(class_names) else "uncategorised"
        colour = colours(int(c) % colours.N) if c >= 0 else (0.6, 0.6, 0.6, 1.0)
        ax.scatter(xy[mask, 0], xy[mask, 1], s=3, alpha=0.6, color=colour, label=name, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"Catalogue embeddings, {len(xy):,} items: {caption}", fontsize=9)
    ax.legend(markerscale=4, fontsize=7, loc="best", frameon=True)
    return _png(fig)


# ---------------------------------------------------------------- markdown
def precision_markdown(precision_at: dict[str, dict[str, float]]) -> list[str]:
    """``precision_at``: ranking label → {"k": P@k}."""
    ks = list(next(iter(precision_at.values())).keys()) if precision_at else []
    lines = ["| Results | " + " | ".join(f"P@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for label, values in precision_at.items():
        lines.append(f"| {label} | " + " | ".join(f"{values[k]:.4f}" for k in ks) + " |")
    return lines


def per_class_markdown(rows: list[dict], columns: dict[str, str]) -> list[str]:
    lines = ["| Class | Queries | " + " | ".join(columns.values()) + " |", "|---|---:|" + "---:|" * len(columns)]
    for r in rows:
        lines.append(f"| {r['class']} | {r['queries']} | " + " | ".join(f"{r[key]:.4f}" for key in columns) + " |")
    return lines


def markdown_sections(r: dict) -> list[str]:
    """Precision@k and per-class tables of an evaluation result, then its pictures (if any)."""
    k = r["k"]
    lines = ["Precision@k (exact ranking):", ""]
    lines += precision_markdown({
        "all categories": r["exact"]["no_filter"]["precision_at"],
        "classify-then-filter (predicted class)": r["exact"]["classify_then_filter"]["precision_at"]})
    lines += ["", "Per class (the queries of that true class; exact ranking):", ""]
    lines += per_class_markdown(r["per_class"], {
        "ap": "AP (all categories)", "precision_at_k": f"P@{k} (all categories)",
        "ap_filtered": "AP classify-then-filter (= class accuracy)"})
    figures = r.get("figures")
    if figures:
        lines += ["", f"![retrieval gallery]({figures['gallery']})", "",
                  f"Retrieval gallery: {figures['gallery_queries']} test queries (one class after another, seeded), "
                  f"each followed by its exact top {figures['gallery_results']} over all categories; a red outline "
                  "marks a result of another class.", "",
                  f"![precision at k]({figures['precision']}) ![per-class AP]({figures['per_class_ap']})", "",
                  f"![embedding map]({figures['embedding_map']})", "",
                  f"Embedding map: {figures['map_points']:,} catalogue items (seeded sample), "
                  f"{figures['embedding_map_caption']}; colour = catalogue class."]
    return lines


# ---------------------------------------------------------------- writing the pictures
def catalogue_images(run_uri: str, item_ids: list[str], size: int = 96) -> dict[str, np.ndarray]:
    """Pixels (thumbnails) of the named catalogue items, read through the image URIs of the
    embeddings run an index was built from. Items whose image cannot be read are left out (the
    gallery shows a placeholder): pictures must not fail an evaluation whose numbers are fine."""
    from artifacts import embeddings, storage
    from artifacts.preprocess import decode_image

    if not run_uri or not item_ids:
        return {}
    try:
        table = embeddings.read_table(run_uri, columns=["item_id", "image_uri"])
    except (OSError, ValueError, KeyError) as exc:
        log.warning("gallery: cannot read image locations from %s (%s)", run_uri, exc)
        return {}
    wanted = set(item_ids)
    uris = {i: u for i, u in zip(table.column("item_id").to_pylist(), table.column("image_uri").to_pylist())
            if i in wanted}
    images = {}
    for item, uri in uris.items():
        try:
            img = decode_image(storage.read_bytes(uri))
        except (OSError, ValueError) as exc:
            log.warning("gallery: cannot read %s (%s)", uri, exc)
            continue
        img.thumbnail((size, size))
        images[item] = np.asarray(img.convert("L") if img.mode in ("L", "LA", "I", "I;16", "1") else img.convert("RGB"))
    return images


def pick_gallery_queries(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` query rows (indices into ``labels``): one of each class in turn, in class order,
    drawn at random (seeded) without repeats, so the gallery shows as many classes as it can."""
    rng = np.random.default_rng(seed)
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
    picked: list[int] = []
    while len(picked) < n and any(pools.values()):
        for c in sorted(pools):
            if pools[c] and len(picked) < n:
                picked.append(int(pools[c].pop()))
    return np.array(picked, np.int64)


def write_figures(out: str, *, index, class_names: list[str], item_classes: np.ndarray, query_images: np.ndarray,
                  labels: np.ndarray, predicted: np.ndarray, top: np.ndarray, curves: dict[str, np.ndarray],
                  per_class_rows: list[dict], gallery_queries: int = 8, gallery_results: int = 10,
                  map_points: int = 5000, map_method: str = "pca", seed: int = 0) -> dict:
    """Write the evaluation's PNGs under ``out`` (a storage URI); returns what the Markdown needs:
    picture name → file name, plus the gallery's and the map's parameters.

    ``top`` ``(q, >= gallery_results)``: each query's exact unfiltered ranking (index positions,
    -1 = none); ``curves``: ``no_filter``/``classify_then_filter`` mean precision@k for k = 1..K.
    """
    from artifacts import storage

    def name_of(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else "uncategorised"

    def write(name: str, data: bytes) -> str:
        storage.write_bytes(storage.join(out, name), data)
        return name

    rows = pick_gallery_queries(labels, gallery_queries, seed)
    shown = top[rows, :gallery_results]
    images = catalogue_images(index.manifest.source_embeddings,
                              sorted({str(index.item_ids[p]) for p in shown.ravel() if p >= 0}))
    gallery = []
    for row, positions in zip(rows, shown):
        guess = "" if predicted[row] == labels[row] else f"\n(predicted {name_of(int(predicted[row]))})"
        results = [{"image": images.get(str(index.item_ids[p])), "label": name_of(int(item_classes[p])),
                    "wrong": bool(item_classes[p] != labels[row])} for p in positions if p >= 0]
        gallery.append({"query": query_images[row], "title": f"query: {name_of(int(labels[row]))}{guess}",
                        "results": results})
    n = len(index.vectors)
    sample = np.sort(np.random.default_rng(seed).choice(n, size=min(map_points, n), replace=False))
    xy, caption = embedding_map(index.vectors[sample], map_method, seed)
    return {
        "gallery": write("retrieval_gallery.png", gallery_png(gallery)),
        "gallery_queries": len(rows), "gallery_results": gallery_results,
        "gallery_rows": [int(r) for r in rows],
        "precision": write("precision_at_k.png", precision_png(
            {"all categories": curves["no_filter"], "classify-then-filter": curves["classify_then_filter"]})),
        "per_class_ap": write("per_class_ap.png", per_class_ap_png(
            per_class_rows, {"ap": "all categories", "ap_filtered": "classify-then-filter (= class accuracy)"})),
        "embedding_map": write("embedding_map.png", embedding_map_png(xy, item_classes[sample], class_names, caption)),
        "embedding_map_caption": caption, "map_points": int(len(sample)),
    }
