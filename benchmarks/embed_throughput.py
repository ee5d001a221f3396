"""Embedding throughput: the Ray Data job against a plain single-process loop, and the
incremental re-run against a full run, in one benchmark run over the same catalogue.

    python benchmarks/embed_throughput.py                      # .vitrine's catalogue and LATEST model
    python benchmarks/embed_throughput.py --catalogue URI --model URI --limit 20000 --markdown docs/BENCHMARKS.md

Measured, each in a fresh process so both sides pay their own start-up (TensorFlow import,
model load; Ray start for the job):
1. baseline: a plain loop in one process: read → Pillow decode/preprocess → Keras predict →
   L2-normalise → pyarrow Parquet write;
2. ``vitrine embed --full`` (Ray Data: decode tasks + an actor pool running the model), once
   starting its own local Ray (a laptop run) and twice as a job's driver on a Ray that is
   already running (``--address``: what ``ray job submit`` / ``vitrine submit`` runs; the first
   job on a cluster also starts Ray Data's own actors);
3. a second full run and an incremental run with ``--changed`` (1%) of the images edited,
   in ONE warm process (Ray, TensorFlow and the model already loaded: a long-lived driver such
   as a scheduler worker), and the same incremental run cold, from a fresh process: once on its
   own (TensorFlow and the model loaded in that process) and once with the search service
   running (``vitrine serve`` over the same model), whose ``POST /v1/embed`` embeds the increment.
Peak memory is the largest resident set of the whole process tree (driver + Ray workers),
sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------- the baseline
def plain_loop(catalogue: str, model_uri: str, out: str, limit: int) -> dict:
    """The published design's batch path: everything in one process, one step after another."""
    t0 = time.time()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from artifacts import model_artifact, storage
    from artifacts.catalogue_listing import list_catalogue
    from artifacts.preprocess import ImageDecodeError, preprocess_bytes

    loaded = model_artifact.load(model_uri)
    net = loaded.embedding_model()
    spec = loaded.card.preprocess_spec
    items = list_catalogue(catalogue).to_pylist()[: limit or None]
    ids, vecs, preds, failed = [], [], [], 0
    for start in range(0, len(items), 1024):
        xs, batch_ids = [], []
        for item in items[start:start + 1024]:
            try:
                xs.append(preprocess_bytes(storage.read_bytes(item["image_uri"]), spec))
                batch_ids.append(item["item_id"])
            except ImageDecodeError:
                failed += 1
        emb, probs = net.predict(np.stack(xs), batch_size=256, verbose=0)
        vecs.append(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))
        preds.append(probs.argmax(axis=1))
        ids.extend(batch_ids)
    v = np.concatenate(vecs).astype(np.float32)
    table = pa.table({"item_id": ids,
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1]),
                      "predicted": np.concatenate(preds)})
    pq.write_table(table, out)
    return {"items": len(ids), "failed": failed, "seconds": time.time() - t0}


# ------------------------------------------------------------------------------ measurement
def timed(cmd: list[str], env: dict) -> dict:
    from benchmarks.memory import TreeMemory

    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemory(proc.pid) as mem:
        out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return {"seconds": time.time() - t0, "peak_rss_mb": mem.peak / 2**20, "stdout": out}


def edit_one_percent(catalogue: Path, share: float, seed: int = 0) -> int:
    """Mirror ``share`` of the images (new content for the same items) and refresh the manifest."""
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageOps

    from artifacts.catalogue import content_sha256
    from artifacts.catalogue_manifest import write_manifest

    manifest = pq.read_table(catalogue / "manifest.parquet")
    rows = manifest.to_pylist()
    pick = set(np.random.default_rng(seed).choice(len(rows), max(1, int(len(rows) * share)), replace=False).tolist())
    for i in pick:
        path = catalogue / rows[i]["image_uri"]
        buf = io.BytesIO()
        ImageOps.mirror(Image.open(path)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
        rows[i]["content_sha256"] = content_sha256(buf.getvalue())
    write_manifest(pa.Table.from_pylist(rows, schema=manifest.schema), str(catalogue / "manifest.parquet"))
    return len(pick)


def warm_runs(catalogue: str, model: str, out: str, share: float) -> dict:
    """Full, full again, edit, incremental: all in this one process."""
    from dataclasses import replace

    from jobs.embed_catalogue import EmbedConfig, run

    base = EmbedConfig(catalogue=catalogue, model=model, out=out, local_max_items=0)
    times = {}
    t0 = time.time()
    first = run(replace(base, full=True, run_id="warm-full-1"))
    times["full_1"] = time.time() - t0
    t0 = time.time()
    run(replace(base, full=True, run_id="warm-full-2"))
    times["full_2"] = time.time() - t0
    changed = edit_one_percent(Path(catalogue), share)
    t0 = time.time()
    # The defaults: a change this small runs in the driver, which already holds the model.
    inc = run(replace(base, run_id="warm-incremental", local_max_items=EmbedConfig.local_max_items))
    times["incremental"] = time.time() - t0
    # The next night in the same long-lived scheduler process: the model is loaded already.
    edit_one_percent(Path(catalogue), share, seed=1)
    t0 = time.time()
    run(replace(base, run_id="warm-incremental-2", local_max_items=EmbedConfig.local_max_items))
    times["incremental_loaded"] = time.time() - t0
    return {"times": times, "changed": changed, "counts": inc.counts, "items": first.counts["embedded"]}


def on_running_ray(cat: Path, model: str, work: Path, env: dict) -> list[dict]:
    """Two full runs, each a fresh driver process joining one running single-node Ray."""
    from cluster.local_cluster import LocalCluster, LocalClusterConfig

    cluster = LocalCluster(LocalClusterConfig(workers=0, head_cpus=os.cpu_count() or 1, memory_mb=8192,
                                              object_store_mb=2048, env=(f"RAY_AUTH_MODE={env['RAY_AUTH_MODE']}",)))
    with cluster:
        runs = []
        for i in (1, 2):
            r = timed([sys.executable, "-m", "jobs.cli", "embed", "--catalogue", str(cat), "--model", model,
                       "--storage", str(work / f"running-{i}"), "--full", "--set", "local_max_items=0",
                       "--address", cluster.address], env)
            runs.append({"wall": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]})
    return runs


def incremental_via_service(cat: Path, model: str, out: Path, storage_root: str, env: dict, share: float) -> dict:
    """A fresh-process incremental run while the search service runs over ``storage_root``."""
    import signal
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "jobs.cli", "serve", "--storage", storage_root, "--port", str(port),
                               "--metrics-port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the service did not come up:\n{server.stderr.read()[-3000:]}")
            time.sleep(1)
        with urllib.request.urlopen(url + "/v1/info", timeout=5) as r:
            served = json.loads(r.read())["model_id"]
        time.sleep(10)  # let the service settle (replica start-up work) before timing
        changed = edit_one_percent(cat, share, seed=2)
        r = timed([sys.executable, "-m", "jobs.cli", "embed", "--catalogue", str(cat), "--model", model,
                   "--storage", str(out), "--json", "--set", f"service_url={url}"], env)
        result = json.loads(r["stdout"][r["stdout"].index("{"):])
        return {"wall": r["seconds"], "peak_rss_mb": r["peak_rss_mb"], "mode": result["timings"]["mode"],
                "served_model": served, "changed": changed, "counts": result["counts"]}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # `vitrine serve` then stops Serve and its local Ray
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------- driver
def _parser(storage_root: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--catalogue", default=os.path.join(storage_root, "catalogues", "fashion-mnist-train"))
    p.add_argument("--model", default=os.path.join(storage_root, "models"))
    p.add_argument("--limit", type=int, default=0, help="first N items (0 = all; the target needs >= 20,000)")
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--markdown", help="append the results table to this file")
    p.add_argument("--service-storage", default=storage_root,
                   help="storage root the search service serves for the last run (its model must be --model's)")
    p.add_argument("--_plain", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_warm", nargs=3, help=argparse.SUPPRESS)
    return p


def private_catalogue(catalogue: str, work: Path, limit: int) -> Path:
    """A private copy: the benchmark edits images, and --limit trims the manifest."""
    cat = work / "catalogue"
    shutil.copytree(catalogue, cat)
    if limit:
        import pyarrow.parquet as pq

        from artifacts.catalogue_manifest import write_manifest

        write_manifest(pq.read_table(cat / "manifest.parquet").slice(0, limit), str(cat / "manifest.parquet"))
    return cat


def measure_all(args, env: dict) -> dict:
    """Every run of the module docstring, in that order, on a private copy of the catalogue."""
    work = Path(tempfile.mkdtemp(prefix="vitrine-bench-"))
    try:
        cat = private_catalogue(args.catalogue, work, args.limit)
        me = [sys.executable, str(Path(__file__).resolve())]
        results = {}
        print("baseline: plain loop ...", flush=True)
        r = timed([*me, "--_plain", str(cat), args.model, str(work / "plain.parquet")], env)
        results["plain"] = {**json.loads(r["stdout"].strip().splitlines()[-1]), "wall": r["seconds"],
                            "peak_rss_mb": r["peak_rss_mb"]}
        print("Ray Data job, cold ...", flush=True)
        r = timed([sys.executable, "-m", "jobs.cli", "embed", "--catalogue", str(cat), "--model", args.model,
                   "--storage", str(work / "cold"), "--full", "--set", "local_max_items=0"], env)
        results["ray_cold"] = {"wall": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}
        print("Ray Data job on a running Ray, fresh driver processes ...", flush=True)
        results["ray_running"] = on_running_ray(cat, args.model, work, env)
        print("warm process: full, full, edit, incremental ...", flush=True)
        r = timed([*me, "--_warm", str(cat), args.model, str(work / "warm"), "--changed", str(args.changed)], env)
        results["warm"] = {**json.loads(r["stdout"].strip().splitlines()[-1]), "peak_rss_mb": r["peak_rss_mb"]}
        print("incremental, cold ...", flush=True)
        edit_one_percent(cat, args.changed, seed=1)
        r = timed([sys.executable, "-m", "jobs.cli", "embed", "--catalogue", str(cat), "--model", args.model,
                   "--storage", str(work / "warm")], env)
        results["incremental_cold"] = {"wall": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}
        print("incremental, cold, with the search service running ...", flush=True)
        results["incremental_service"] = incremental_via_service(cat, args.model, work / "warm", args.service_storage,
                                                                 env, args.changed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def table_rows(results: dict, changed: float) -> list[tuple[str, float, float | None]]:
    """(run, seconds, peak RSS MB or None) for each line of the table."""
    w = results["warm"]["times"]
    return [
        ("plain loop (baseline), fresh process", results["plain"]["wall"], results["plain"]["peak_rss_mb"]),
        ("`vitrine embed --full` (Ray Data), fresh process starting its own Ray", results["ray_cold"]["wall"],
         results["ray_cold"]["peak_rss_mb"]),
        ("`vitrine embed --full --address` (Ray Data), fresh driver on a running Ray, 1st job",
         results["ray_running"][0]["wall"], None),
        ("`vitrine embed --full --address` (Ray Data), fresh driver on a running Ray, 2nd job",
         results["ray_running"][1]["wall"], None),
        ("Ray Data full run, warm process (1st job)", w["full_1"], None),
        ("Ray Data full run, warm process (2nd job)", w["full_2"], results["warm"]["peak_rss_mb"]),
        (f"incremental, {changed:.0%} changed, warm process (loads the model)", w["incremental"], None),
        (f"incremental, {changed:.0%} changed, warm process, model loaded (next night)", w["incremental_loaded"], None),
        (f"incremental, {changed:.0%} changed, fresh process", results["incremental_cold"]["wall"],
         results["incremental_cold"]["peak_rss_mb"]),
        (f"incremental, {changed:.0%} changed, fresh process, through the running service "
         f"(mode: {results['incremental_service']['mode']})", results["incremental_service"]["wall"],
         results["incremental_service"]["peak_rss_mb"]),
    ]


def speedups(results: dict) -> list[str]:
    """The ratios the targets are about, as Markdown bullets."""
    w = results["warm"]["times"]
    return [f"- Ray Data job vs plain loop, both fresh processes: **{results['plain']['wall'] / results['ray_cold']['wall']:.2f}×** "
            f"with the job starting its own Ray; as a job on a running Ray: "
            f"**{results['plain']['wall'] / results['ray_running'][0]['wall']:.2f}×** (1st job), "
            f"**{results['plain']['wall'] / results['ray_running'][1]['wall']:.2f}×** (2nd)",
            f"- Ray Data job (warm, 2nd) vs plain loop: **{results['plain']['wall'] / w['full_2']:.2f}×**",
            f"- Incremental ({results['warm']['changed']} changed) vs full run, warm process: "
            f"**{w['full_2'] / w['incremental']:.1f}×** (model loaded: **{w['full_2'] / w['incremental_loaded']:.1f}×**); "
            f"fresh processes: "
            f"**{results['ray_cold']['wall'] / results['incremental_cold']['wall']:.1f}×**",
            f"- Incremental, fresh process through the service (model {results['incremental_service']['served_model']}) "
            f"vs full run, fresh driver on a running Ray (2nd job): "
            f"**{results['ray_running'][1]['wall'] / results['incremental_service']['wall']:.1f}×**; vs the fresh "
            f"full run with its own Ray: **{results['ray_cold']['wall'] / results['incremental_service']['wall']:.1f}×**",
            f"- Incremental counts: `{json.dumps(results['warm']['counts'])}`; through the service: "
            f"`{json.dumps(results['incremental_service']['counts'])}`"]


def report(results: dict, args) -> str:
    """The Markdown the benchmark prints (and appends to --markdown)."""
    n = results["plain"]["items"]
    lines = [f"Catalogue: {n:,} images ({args.catalogue}); model {args.model}; {os.cpu_count()} CPUs; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "| run | seconds | images/s | peak RSS (tree) |", "|:--|--:|--:|--:|"]
    for name, secs, mem in table_rows(results, args.changed):
        lines.append(f"| {name} | {secs:.1f} | {n / secs:,.0f} | {f'{mem:,.0f} MB' if mem else '–'} |")
    lines += ["", *speedups(results)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    storage_root = os.environ.get("VITRINE_STORAGE", str(ROOT / ".vitrine"))
    args = _parser(storage_root).parse_args(argv)
    if args._plain:
        print(json.dumps(plain_loop(*args._plain, limit=args.limit)))
        return 0
    if args._warm:
        print(json.dumps(warm_runs(*args._warm, share=args.changed)))
        return 0

    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    text = report(measure_all(args, env), args)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
