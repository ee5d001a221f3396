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

EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
QUERIES = 1000


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
                                "p99_ms": float(np.percentile(ms, 99)), **_replica_path(searcher, q, category)}
                break
    print(json.dumps(result))
    return 0


def _replica_path(searcher, q: np.ndarray, category) -> dict:
    """What a replica's ``search`` adds to the graph walk: hits, ids, metadata, merge of shards."""
    times = []
    for i in range(len(q)):
        t = time.perf_counter()
        searcher.search(q[i], 10, None if category is None else category[i])
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"search_p50_ms": float(np.percentile(ms, 50)), "search_p99_ms": float(np.percentile(ms, 99))}


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_size(n: int, work: Path, model: str, cluster, env: dict, qpath: Path, local_max: int) -> dict:
    from benchmarks.scale_catalogue import change_set, ensure_pool, write_manifest

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
    f = timed([py, "-m", "jobs.embed_catalogue", "--catalogue", changes_b, "--model", model, "--storage", str(out),
               "--address", cluster.address, "--set", f"local_max_items={local_max}", "--json"], env, pids)
    row["increment_fresh_job"] = {"seconds": f["seconds"], "driver_rss_mb": f["driver_rss_mb"],
                                  "counts": f["result"].get("counts"), "timings": f["result"].get("timings")}
    print(f"[{n:,}] index: full build, then the incremental update", flush=True)
    full_ix = timed([py, "-m", "jobs.build_index", "--embeddings", str(run_dir), "--storage", str(out), "--full",
                     "--json"], env, [])
    inc_ix = timed([py, "-m", "jobs.build_index", "--embeddings", res["increments"][0]["run_uri"], "--storage", str(out),
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
    from benchmarks.scale_report import markdown, plot

    table = markdown(rows, command, wall_s)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
