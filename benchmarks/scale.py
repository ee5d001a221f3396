"""Scale: what the nightly chain costs from 60k to 1M catalogue items, on this machine, in one run.

    python benchmarks/scale.py                                  # 60k, 250k, 1M; the LATEST model
    python benchmarks/scale.py --sizes 60000,250000 --work /data/scale --json out.json \\
        --markdown out.md --plot docs/img/scale.png

At each size, on a Ray cluster this benchmark starts (one ``ray start`` head on loopback; every
job below is a driver on it, as ``ray job submit`` runs one):
1. **full run**: ``vitrine embed --full`` of the catalogue: items/s, the driver's peak RSS
   (``ru_maxrss``) and the peak RSS of the whole tree (driver + every Ray process), Parquet bytes;
2. **1% increment, same process**: the same driver then embeds a catalogue with 0.5% of the
   items changed and 0.5% added, twice: "cold" (the first loads the model into the driver) and
   "warm" (a long-lived scheduler that keeps its model); increments of up to
   ``--local-max-items`` (default 20,000) are embedded in the driver, larger ones by Ray Data;
3. **1% increment, fresh job**: another 1% on top of those, from a new process;
4. **index**: ``vitrine build-index --full`` on the full run, then the incremental update to the
   first increment's run (time, peak RSS, recall@10 that the job measures);
5. **replica**: the index loaded as a Search replica loads it (``serve.searcher``; what a hot
   swap costs), its RSS against the graphs' bytes (vectors plus links), then single-query search
   on one thread at the smallest ``ef`` that reaches recall@10 >= 0.99, unfiltered and within the
   query's category (1,000 test-split tiles as queries, exact search as the reference).

The catalogues are Fashion-MNIST train tiles and variations of them (shifted by up to 2 px,
brightness x0.75-1.15, sparse noise; every image its own bytes and hash), PNG files under
``--work`` (default ``$VITRINE_CACHE_DIR/scale``), generated once and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = 1  # bump when the variation recipe changes: the image pool is made again
CHUNK = 20_000
EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
QUERIES = 1000


# ------------------------------------------------------------------------------- catalogues
def _variant(tile: np.ndarray, i: int) -> np.ndarray:
    """Item ``i``: the tile itself for the first copy, else a seeded variation of it."""
    if i < 60_000:
        return tile
    rng = np.random.default_rng(i)
    dy, dx = rng.integers(-2, 3, 2)
    img = np.roll(tile, (int(dy), int(dx)), (0, 1)).astype(np.float32) * rng.uniform(0.75, 1.15)
    mask = rng.random(tile.shape) < 0.05
    img[mask] += rng.normal(0, 20, int(mask.sum()))
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_chunk(args) -> list[dict]:
    lo, hi, pool, prefix, seed_offset = args
    from artifacts.catalogue import content_sha256
    from jobs.export_catalogue import category_slug, encode_png
    from tune.data.fashion_mnist import CLASS_NAMES, load

    data = load(allow_download=False)
    rows = []
    for i in range(lo, hi):
        base = i % len(data.train_labels)
        name = CLASS_NAMES[int(data.train_labels[base])]
        png = encode_png(_variant(data.train_images[base], i + seed_offset))
        rel = f"{prefix}/{category_slug(name)}/{i:07d}.png"
        path = Path(pool) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        rows.append({"item_id": f"item-{i:07d}", "image_uri": rel, "category": name,
                     "content_sha256": content_sha256(png)})
    return rows


def _images(pool: Path, lo: int, hi: int, prefix: str, seed_offset: int = 0) -> "pa.Table":
    import multiprocessing as mp

    import pyarrow as pa

    jobs = [(s, min(s + CHUNK, hi), str(pool), prefix, seed_offset) for s in range(lo, hi, CHUNK)]
    rows: list[dict] = []
    with mp.get_context("spawn").Pool(max(1, min(os.cpu_count() or 1, 4))) as workers:
        for done, part in enumerate(workers.imap(_make_chunk, jobs), 1):
            rows.extend(part)
            print(f"  {prefix}: {min(done * CHUNK, hi - lo):,}/{hi - lo:,} images", flush=True)
    return pa.Table.from_pylist(rows)


def ensure_pool(work: Path, n: int) -> "pa.Table":
    """The first ``n`` items of the image pool (made where missing) as a manifest table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = work / "catalogue"
    index = pool / f"pool-r{RECIPE}.parquet"
    have = pq.read_table(index) if index.exists() else None
    count = 0 if have is None else have.num_rows
    if count < n:
        print(f"generating images {count:,}..{n:,} under {pool}", flush=True)
        more = _images(pool, count, n, "images")
        have = more if have is None else pa.concat_tables([have, more])
        tmp = index.with_suffix(".tmp")
        pq.write_table(have, tmp)
        tmp.replace(index)
    return have.slice(0, n)


def change_set(work: Path, base: "pa.Table", n: int, tag: str, seed: int) -> "pa.Table":
    """``base`` with 0.5% of its items given new images and 0.5% new items added."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pool = work / "catalogue"
    k = max(1, n // 200)
    rng = np.random.default_rng(seed)
    changed = np.sort(rng.choice(n, size=k, replace=False))
    fresh = _images(pool, 10_000_000 + seed * 1_000_000, 10_000_000 + seed * 1_000_000 + 2 * k,
                    f"changes-{tag}-{n}", seed_offset=n)
    edited = fresh.slice(0, k)
    added = fresh.slice(k, k)
    added = added.set_column(0, "item_id", pa.array([f"new-{tag}-{j:07d}" for j in range(k)]))
    new_uri = base.column("image_uri").to_pylist()
    new_hash = base.column("content_sha256").to_pylist()
    for j, pos in enumerate(changed):
        new_uri[pos] = edited.column("image_uri")[j].as_py()
        new_hash[pos] = edited.column("content_sha256")[j].as_py()
    out = base.set_column(1, "image_uri", pa.array(new_uri)).set_column(3, "content_sha256", pa.array(new_hash))
    # The edited images keep their item's category: take the base's.
    assert pc.all(pc.equal(out.column("category"), base.column("category"))).as_py()
    return pa.concat_tables([out, added.select(out.column_names)])


def write_manifest(work: Path, table, name: str) -> str:
    import pyarrow.parquet as pq

    path = work / "catalogue" / name
    pq.write_table(table, path)
    return str(path)


# ------------------------------------------------------------------------------- measured steps
def timed(cmd: list[str], env: dict, cluster_pids: list[int]) -> dict:
    """Run ``cmd``; its wall time, its own peak RSS (ru_maxrss) and the peak RSS of it plus the
    Ray cluster's processes, its JSON stdout."""
    from benchmarks.memory import TreeMemory

    t0 = time.time()
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=devnull, cwd=str(ROOT))
        with TreeMemory(proc.pid, *cluster_pids, every_s=0.25) as mem:
            out = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise RuntimeError(f"{' '.join(cmd)} failed (status {status})")
    text = out.decode()
    return {"seconds": time.time() - t0, "driver_rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": mem.peak / 2**20,
            "result": json.loads(text[text.index("{"):]) if "{" in text else {}}


def session(args) -> int:
    """Subprocess: a full run, then increments, in this one driver process (the first loads the
    model into the driver; the next finds it loaded, as a long-lived scheduler would)."""
    import resource

    from artifacts.logs import setup_logging
    from jobs.embed_catalogue import EmbedConfig, run

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    setup_logging()
    base = {"model": args.model, "out": args.out, "address": args.address,
            "local_max_items": int(args.local_max_items)}
    t = time.time()
    full = run(EmbedConfig(**base, catalogue=args.catalogue, full=True))
    out = {"full": {"seconds": time.time() - t, "driver_rss_mb": rss(), "counts": full.counts,
                    "timings": full.timings, "run_uri": full.run_uri}, "increments": []}
    for changes in args.changes.split(","):
        t = time.time()
        inc = run(EmbedConfig(**base, catalogue=changes))
        out["increments"].append({"seconds": time.time() - t, "driver_rss_mb": rss(), "counts": inc.counts,
                                  "timings": inc.timings, "run_uri": inc.run_uri})
    print(json.dumps(out))
    return 0


def queries(args) -> int:
    """Subprocess: the model's embeddings of test-split tiles (read as uploads are), for search."""
    from artifacts.inference import ModelRunner, configure_tensorflow
    from artifacts.preprocess import preprocess_bytes
    from jobs.export_catalogue import encode_png
    from tune.data.fashion_mnist import CLASS_NAMES, load

    configure_tensorflow(0)
    runner = ModelRunner(args.model)
    data = load(allow_download=False)
    x = np.stack([preprocess_bytes(encode_png(t), runner.card.preprocess_spec) for t in data.test_images[:QUERIES]])
    out = runner(x.reshape(len(x), *runner.shape))
    np.save(args.out, out.embeddings)
    Path(args.out).with_suffix(".json").write_text(json.dumps([CLASS_NAMES[int(y)] for y in data.test_labels[:QUERIES]]))
    return 0


def replica(args) -> int:
    """Subprocess: load the index as a Search replica does; its RSS; search speed at recall >= 0.99."""
    from artifacts.vector_search import recall_at_k
    from benchmarks.memory import rss_bytes
    from serve.searcher import CatalogueSearcher

    q = np.load(args.queries)
    cats = json.loads(Path(args.queries).with_suffix(".json").read_text())
    before = rss_bytes(os.getpid())
    t = time.time()
    searcher = CatalogueSearcher(args.index, threads=1)
    load_s = time.time() - t
    rss = rss_bytes(os.getpid())
    index = searcher.index
    if hasattr(index, "shards"):  # a sharded layout; this benchmark builds one shard, searched directly
        (index,) = index.shards.values()
    local = Path(index.uri)
    graphs = (local / "index.bin").stat().st_size + sum(p.stat().st_size for p in (local / "categories").glob("*.bin"))
    result = {"load_s": load_s, "rss_mb": rss / 2**20, "rss_before_mb": before / 2**20, "graph_mb": graphs / 2**20,
              "items": len(index)}
    exact_all = index.exact_search_positions(q, 10)
    exact_cat = np.concatenate([index.exact_search_positions(q[i:i + 1], 10, c)[1] for i, c in enumerate(cats)])
    for name, category in (("unfiltered", None), ("category", cats)):
        for ef in EFS:
            index.set_ef(ef)
            pos, times = [], []
            for i in range(len(q)):
                t = time.perf_counter()
                p, _ = index.search_positions(q[i:i + 1], 10, None if category is None else category[i])
                times.append(time.perf_counter() - t)
                pos.append(p[0])
            pos = np.stack(pos)
            ref = exact_all[1] if category is None else exact_cat
            sims = np.einsum("qd,qkd->qk", q, index.vectors[np.maximum(pos, 0)])
            recall = recall_at_k(pos, ref, sims)
            if recall >= 0.99 or ef == EFS[-1]:
                ms = np.array(times) * 1e3
                result[name] = {"ef": ef, "recall_at_10": recall, "p50_ms": float(np.percentile(ms, 50)),
                                "p99_ms": float(np.percentile(ms, 99))}
                break
    print(json.dumps(result))
    return 0


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_size(n: int, work: Path, model: str, cluster, env: dict, qpath: Path, local_max: int) -> dict:
    items = ensure_pool(work, n)
    manifest = write_manifest(work, items, f"manifest-{n}.parquet")
    a = change_set(work, items, n, "a", seed=1)
    c = change_set(work, a, a.num_rows, "c", seed=3)
    b = change_set(work, c, c.num_rows, "b", seed=2)
    changes_a = write_manifest(work, a, f"manifest-{n}-a.parquet")
    changes_c = write_manifest(work, c, f"manifest-{n}-c.parquet")
    changes_b = write_manifest(work, b, f"manifest-{n}-b.parquet")
    with _machine_lock():
        return _measure(n, work, model, cluster, env, qpath, local_max, manifest, changes_a, changes_c, changes_b)


def _machine_lock():
    """``$VITRINE_BENCH_LOCK`` (a lock file other heavy jobs on this machine take too, such as
    the test runs' ``flock``), held while one size is measured; a no-op when unset."""
    import contextlib
    import fcntl

    path = os.environ.get("VITRINE_BENCH_LOCK")
    if not path:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    return held()


def _measure(n, work, model, cluster, env, qpath, local_max, manifest, changes_a, changes_c, changes_b) -> dict:
    py = sys.executable
    me = str(Path(__file__).resolve())
    out = work / "runs" / str(n)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    pids = [node.pid for node in cluster.nodes]
    row: dict = {"items": n}
    print(f"[{n:,}] full run + increment in one driver", flush=True)
    s = timed([py, me, "session", "--catalogue", manifest, "--changes", f"{changes_a},{changes_c}", "--model", model,
               "--out", str(out), "--address", cluster.address, "--local-max-items", str(local_max)], env, pids)
    res = s["result"]
    row["full"] = {**res["full"], "tree_rss_mb": s["tree_rss_mb"],
                   "items_per_s": n / res["full"]["timings"]["embed_s"] if res["full"]["timings"].get("embed_s") else None}
    row["increment_same_process"] = res["increments"][0]
    row["increment_same_process_warm"] = res["increments"][1]
    run_dir = Path(res["full"]["run_uri"])
    row["parquet_mb"] = _dir_bytes(run_dir / "data") / 2**20
    print(f"[{n:,}] increment as a fresh job", flush=True)
    f = timed([py, "-m", "jobs.embed_catalogue", "--catalogue", changes_b, "--model", model, "--out", str(out),
               "--address", cluster.address, "--set", f"local_max_items={local_max}", "--json"], env, pids)
    row["increment_fresh_job"] = {"seconds": f["seconds"], "driver_rss_mb": f["driver_rss_mb"],
                                  "counts": f["result"].get("counts"), "timings": f["result"].get("timings")}
    print(f"[{n:,}] index: full build, then the incremental update", flush=True)
    full_ix = timed([py, "-m", "jobs.build_index", "--embeddings", str(run_dir), "--out", str(out), "--full",
                     "--json"], env, [])
    inc_ix = timed([py, "-m", "jobs.build_index", "--embeddings", res["increments"][0]["run_uri"], "--out", str(out),
                    "--json"], env, [])
    row["index_full"] = {"seconds": full_ix["seconds"], "rss_mb": full_ix["driver_rss_mb"],
                         **{k: full_ix["result"].get(k) for k in ("build_seconds", "recall_at_10", "mode", "index_uri")}}
    row["index_incremental"] = {"seconds": inc_ix["seconds"], "rss_mb": inc_ix["driver_rss_mb"],
                                **{k: inc_ix["result"].get(k) for k in ("build_seconds", "recall_at_10", "mode",
                                                                        "reason", "index_uri")}}
    print(f"[{n:,}] replica: load and search", flush=True)
    r = timed([py, me, "replica", "--index", str(out / "indexes"), "--queries", str(qpath)], env, [])
    row["replica"] = r["result"]
    print(json.dumps(row, indent=1), flush=True)
    return row


# ------------------------------------------------------------------------------- report
def markdown(rows: list[dict], command: str, wall_s: float) -> str:
    def g(row, *path, fmt="{:.1f}"):
        v = row
        for p in path:
            v = (v or {}).get(p)
        return "–" if v is None else fmt.format(v)

    lines = [f"Measured with `{command}` ({wall_s / 60:.0f} min in all).", "",
             "| items | full run s | items/s | driver peak RSS MB | tree peak RSS MB | Parquet MB "
             "| 1% incr. same process, cold / warm s | 1% incr. fresh job s | index full s | index incr. s | recall full/incr. "
             "| replica load s | replica RSS MB | graphs MB | p50/p99 ms (ef) all | p50/p99 ms (ef) category |",
             "|" + "--:|" * 16]
    for r in rows:
        rep = r.get("replica", {})
        lines.append("| " + " | ".join([
            f"{r['items']:,}", g(r, "full", "seconds"), g(r, "full", "items_per_s", fmt="{:,.0f}"),
            g(r, "full", "driver_rss_mb", fmt="{:,.0f}"), g(r, "full", "tree_rss_mb", fmt="{:,.0f}"),
            g(r, "parquet_mb", fmt="{:,.0f}"),
            f"{g(r, 'increment_same_process', 'seconds')} / {g(r, 'increment_same_process_warm', 'seconds')}",
            g(r, "increment_fresh_job", "seconds"), g(r, "index_full", "seconds"), g(r, "index_incremental", "seconds"),
            f"{g(r, 'index_full', 'recall_at_10', fmt='{:.4f}')}/{g(r, 'index_incremental', 'recall_at_10', fmt='{:.4f}')}",
            g(rep, "load_s"), g(rep, "rss_mb", fmt="{:,.0f}"), g(rep, "graph_mb", fmt="{:,.0f}"),
            *(f"{g(rep, k, 'p50_ms', fmt='{:.3f}')}/{g(rep, k, 'p99_ms', fmt='{:.3f}')} ({g(rep, k, 'ef', fmt='{}')})"
              for k in ("unfiltered", "category"))]) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["items"] for r in rows]

    def series(*keys):
        out = []
        for r in rows:
            v = r
            for k in keys:
                v = (v or {}).get(k)
            out.append(v)
        return out

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, keys in (("full embedding run", ("full", "seconds")),
                        ("1% increment, same process (model loaded)", ("increment_same_process_warm", "seconds")),
                        ("1% increment, fresh job", ("increment_fresh_job", "seconds")),
                        ("index full build", ("index_full", "seconds")),
                        ("index incremental update", ("index_incremental", "seconds")),
                        ("replica load (hot swap)", ("replica", "load_s"))):
        axes[0].plot(n, series(*keys), marker="o", label=label)
    axes[0].set_ylabel("seconds")
    for label, keys in (("embedding driver", ("full", "driver_rss_mb")), ("driver + Ray tree", ("full", "tree_rss_mb")),
                        ("index build", ("index_full", "rss_mb")), ("search replica", ("replica", "rss_mb")),
                        ("replica graphs (files)", ("replica", "graph_mb")), ("Parquet", ("parquet_mb",))):
        axes[1].plot(n, series(*keys), marker="o", label=label)
    axes[1].set_ylabel("MB")
    for label, keys in (("p50 unfiltered", ("replica", "unfiltered", "p50_ms")),
                        ("p99 unfiltered", ("replica", "unfiltered", "p99_ms")),
                        ("p50 in category", ("replica", "category", "p50_ms")),
                        ("p99 in category", ("replica", "category", "p99_ms"))):
        axes[2].plot(n, series(*keys), marker="o", label=label)
    axes[2].set_ylabel("ms per query (1 thread, recall@10 >= 0.99)")
    for ax, title in zip(axes, ("time", "memory and bytes", "search latency")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("catalogue items")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("session", "queries", "replica"):
        p = argparse.ArgumentParser()
        for flag in ("--catalogue", "--changes", "--model", "--out", "--address", "--index", "--queries",
                     "--local-max-items"):
            p.add_argument(flag)
        sub = p.parse_args(argv[1:])
        return {"session": session, "queries": queries, "replica": replica}[argv[0]](sub)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="60000,250000,1000000")
    p.add_argument("--work", help="where the images and runs go (default $VITRINE_CACHE_DIR/scale)")
    p.add_argument("--model", help="model dir or models/ dir (default $VITRINE_STORAGE/models)")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--plot", help="write the log-log plots here (PNG)")
    p.add_argument("--local-max-items", type=int, default=20_000,
                   help="increments up to this many items are embedded in the driver (EmbedConfig.local_max_items)")
    p.add_argument("--from-json", help="only render the table and plots of an earlier run's --json")
    args = p.parse_args(argv)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        return _report(rows, args, "python benchmarks/scale.py (see the run's command)", 0.0)
    import signal

    from artifacts import storage
    from cluster.local_cluster import LocalCluster, LocalClusterConfig

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on the way out

    work = Path(args.work or Path(os.environ.get("VITRINE_CACHE_DIR") or Path.home() / ".cache" / "vitrine") / "scale")
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or storage.join(storage.default_root(), "models")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    t0 = time.time()
    qpath = work / "queries.npy"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "queries", "--model", model, "--out", str(qpath)],
                   env=env, check=True, cwd=str(ROOT), stderr=subprocess.DEVNULL)
    rows = []
    cpus = os.cpu_count() or 2
    # Ray runs its workers at niceness 15 by default: on a machine shared with anything else they
    # would measure that, not the job. The benchmark's cluster runs them at the normal priority.
    config = LocalClusterConfig(workers=0, head_cpus=cpus, memory_mb=8192, object_store_mb=2048,
                                temp_root="/tmp", env=("RAY_worker_niceness=0",))
    with LocalCluster(config) as cluster:
        for n in (int(s) for s in args.sizes.split(",")):
            rows.append(measure_size(n, work, model, cluster, env, qpath, args.local_max_items))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    return _report(rows, args, ("python benchmarks/scale.py " + " ".join(argv)).strip(), time.time() - t0)


def _report(rows: list[dict], args, command: str, wall_s: float) -> int:
    table = markdown(rows, command, wall_s)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
