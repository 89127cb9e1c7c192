#!/usr/bin/env python3
"""Publish a generated corpus (corpus.py) into a NoKV cluster with the
`nokv` binary, and time it.

1. `nokv mkdir -p DEST`, then one `nokv publish-dir OUT/runs/<id> DEST/<id>`
   per run (each run's files become visible together, in one commit; a
   publish batch holds at most 1024 files, so the 7,000-file corpus cannot
   be one commit). `--jobs` runs are published at once.
2. `publish-dir` takes no attributes, so the files listed in OUT/attrs.json
   (params.json, metrics.csv, stderr.log of every run) are published again
   with `nokv put --replace --attr run=.. --attr status=.. --attr job=..`
   and their content type.

Writes OUT/publish.json with the timings. Python 3.11 standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv", ".log": "text/plain"}


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[:2000]}")
    return p.stdout


def pool_map(jobs, fn, items):
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        return list(ex.map(fn, items))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nokv", required=True, help="path of the nokv binary")
    ap.add_argument("--endpoints", required=True)
    ap.add_argument("--corpus", required=True, help="corpus.py --out directory")
    ap.add_argument("--dest", default="/bench/runs")
    ap.add_argument("--jobs", type=int, default=4, help="nokv processes at once")
    a = ap.parse_args(argv)

    base = [a.nokv]
    endpoints = ["--endpoints", a.endpoints]
    runs_dir = os.path.join(a.corpus, "runs")
    run_ids = sorted((d for d in os.listdir(runs_dir) if d.isdigit()), key=int)
    with open(os.path.join(a.corpus, "attrs.json")) as f:
        attrs = json.load(f)
    n_files = 0
    n_bytes = 0
    for rid in run_ids:
        for dirpath, _, names in os.walk(os.path.join(runs_dir, rid)):
            for n in names:
                n_files += 1
                n_bytes += os.path.getsize(os.path.join(dirpath, n))

    run(base + ["mkdir", "-p", a.dest] + endpoints)

    t0 = time.monotonic()
    pool_map(a.jobs, lambda rid: run(base + ["publish-dir", os.path.join(runs_dir, rid), f"{a.dest}/{rid}"] + endpoints), run_ids)
    t_dirs = time.monotonic() - t0
    print(f"publish-dir: {len(run_ids)} runs, {n_files} files, {n_bytes / 1e6:.1f} MB in {t_dirs:.1f}s", flush=True)

    def put(item):
        rel, kv = item
        local = os.path.join(runs_dir, rel)
        cmd = base + ["put", local, f"{a.dest}/{rel}", "--replace",
                      "--content-type", CONTENT_TYPES.get(os.path.splitext(rel)[1], "application/octet-stream")]
        for k, v in sorted(kv.items()):
            cmd += ["--attr", f"{k}={v}"]
        run(cmd + endpoints)
        return os.path.getsize(local)

    t1 = time.monotonic()
    attr_bytes = sum(pool_map(a.jobs, put, sorted(attrs.items())))
    t_attrs = time.monotonic() - t1
    print(f"put --replace --attr: {len(attrs)} files, {attr_bytes / 1e6:.1f} MB in {t_attrs:.1f}s", flush=True)

    out = {
        "dest": a.dest,
        "runs": len(run_ids),
        "files": n_files,
        "bytes": n_bytes,
        "jobs": a.jobs,
        "publish_dir_seconds": round(t_dirs, 2),
        "attr_files": len(attrs),
        "attr_bytes": attr_bytes,
        "attr_put_seconds": round(t_attrs, 2),
        "total_seconds": round(t_dirs + t_attrs, 2),
        "method": "one `nokv publish-dir` per run (one commit each), then `nokv put --replace --attr` for the attribute-carrying files",
    }
    with open(os.path.join(a.corpus, "publish.json"), "w") as f:
        json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
