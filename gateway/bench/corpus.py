#!/usr/bin/env python3
"""Deterministic synthetic corpus for the agent token-cost benchmark.

Shaped like the 875-run experiment-tracking corpus of the original NoKV
agent benchmark (docs/agent-benchmark.md): one directory per run,

    runs/<id>/params.json        config (lr, batch_size, model, dataset, seed, optimizer {...})
    runs/<id>/meta.json          experiment, script, job, status, started, duration_s, tags
    runs/<id>/metrics.csv        train: step,epoch,train_loss,val_loss,grad_norm
                                 eval:  step,fidelity,utility,detection_roc_auc,privacy_dcr
    runs/<id>/stdout.log         progress lines; eval samplers log the checkpoint they loaded
    runs/<id>/stderr.log         warnings and progress bars; tracebacks for failed and
                                 cancelled runs (cancelled: KeyboardInterrupt)
    runs/<id>/git.json           commit, branch, dirty
    runs/<id>/checkpoints/step-N.pt   small binary placeholders (completed train runs)

Writes, under OUT:
    runs/            the corpus (published to NoKV with `nokv publish-dir`)
    attrs.json       publish attributes per file (relative path -> {k: v})
    corpus.sqlite    the same facts as tables, for the SQL arm
    oracle.json      the answers to tasks T1-T5, computed from the generated data
    manifest.json    counts and sizes

Python 3.11 standard library only. The same --seed gives byte-identical files.
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sqlite3
import sys
from datetime import datetime, timedelta, timezone

MODELS = ["tabdiff", "tabddpm", "ctgan", "tvae", "great"]
SAMPLER_MODELS = {"tabdiff", "tabddpm"}  # eval runs that load a trained checkpoint
DATASETS = ["adult", "ddxplus_dcr", "california", "churn", "magic"]
DATASET_ROWS = {"adult": 48842, "ddxplus_dcr": 134529, "california": 20640, "churn": 10000, "magic": 19020}
DETECTION_METHODS = ["xgboost_c2st", "logistic_c2st", "catboost_c2st", "mlp_discriminator", "random_forest_c2st"]
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
BATCHES = [32, 64, 128, 256, 512]
HOSTS = [f"gpu-node-{i:02d}" for i in range(1, 9)]
BRANCHES = ["main", "main", "main", "exp/warmup-sweep", "exp/ema", "fix/nan-guard"]

# The five tasks' parameters (also recorded in oracle.json).
T3_MODEL = "tabdiff"
T3_DATASET = "ddxplus_dcr"
TOP_K = 5

# Files that get publish attributes (run, status, job): the ones the tasks
# filter on. The others are published by `nokv publish-dir` alone.
ATTR_FILES = ["params.json", "metrics.csv", "stderr.log"]


def fmt_float(x):
    """A float as the CSV/log writes it (`nan` for NaN)."""
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return f"{x:.6f}"


class Run:
    pass


def plan_runs(rng, n_runs, n_failed, n_cancelled):
    """The per-run decisions (job, model, dataset, status, config)."""
    ids = list(range(1, n_runs + 1))
    failed = set(rng.sample(ids, n_failed))
    cancelled = set(rng.sample([i for i in ids if i not in failed], n_cancelled))
    start = datetime(2026, 3, 2, 8, 0, 0, tzinfo=timezone.utc)
    runs = []
    for rid in ids:
        r = Run()
        r.id = rid
        r.job = "eval" if rng.random() < 0.30 else "train"
        r.model = rng.choice(MODELS)
        r.dataset = rng.choice(DATASETS)
        r.status = "failed" if rid in failed else "cancelled" if rid in cancelled else "completed"
        r.seed = rng.randrange(0, 10_000)
        start += timedelta(minutes=rng.randrange(20, 240))
        r.started = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        r.host = rng.choice(HOSTS)
        r.tags = sorted(rng.sample(["sweep", "baseline", "ablation", "long", "ema", "fp16", "seed-study"], rng.randrange(1, 4)))
        r.git = {
            "commit": hashlib.sha1(f"commit-{rng.random()}".encode()).hexdigest(),
            "branch": rng.choice(BRANCHES),
            "dirty": rng.random() < 0.3,
            "remote": "git@github.com:tabgen-lab/tabgen.git",
        }
        if r.job == "train":
            r.lr = rng.choice(LRS)
            r.batch_size = rng.choice(BATCHES)
            r.epochs = rng.randrange(5, 61)
            opt = rng.choice(["adamw", "adamw", "adam", "sgd"])
            r.optimizer = {
                "name": opt,
                "beta1": 0.9 if opt != "sgd" else None,
                "beta2": rng.choice([0.999, 0.98]) if opt != "sgd" else None,
                "momentum": 0.9 if opt == "sgd" else None,
                "weight_decay": rng.choice([0.0, 0.01, 0.1]),
            }
            r.optimizer = {k: v for k, v in r.optimizer.items() if v is not None}
            r.scheduler = {"name": rng.choice(["cosine", "linear", "constant"]), "warmup_steps": rng.choice([0, 500, 1000])}
        else:
            r.batch_size = rng.choice([1024, 2048, 4096])
            r.num_samples = rng.choice([10_000, 20_000, 50_000])
            r.detection_method = rng.choice(DETECTION_METHODS)
        runs.append(r)
    return runs


# ----- train runs -----

def train_quality(rng, r):
    """The floor of a train run's val_loss: depends on lr, batch, model."""
    lr_pen = abs(math.log10(r.lr) - math.log10(1e-3)) * 0.08
    batch_pen = abs(math.log2(r.batch_size) - 7) * 0.015
    model_base = {"tabdiff": 0.28, "tabddpm": 0.31, "ctgan": 0.45, "tvae": 0.41, "great": 0.37}[r.model]
    return model_base + lr_pen + batch_pen + rng.uniform(0.0, 0.12)


def gen_train(rng, r):
    n_rows = rng.randrange(10, 201)
    if r.status != "completed":
        n_rows = max(10, int(n_rows * rng.uniform(0.2, 0.8)))
    step_every = rng.choice([50, 100, 200, 250])
    val_every = rng.choice([1, 2, 5])
    floor = train_quality(rng, r)
    diverge_at = None
    if r.lr >= 3e-3 and rng.random() < 0.25:
        diverge_at = rng.randrange(n_rows // 2, n_rows)  # loss becomes nan from here on
    rows = []
    steps_per_epoch = max(1, (n_rows * step_every) // r.epochs)
    for i in range(n_rows):
        step = (i + 1) * step_every
        t = i / max(1, n_rows - 1)
        train_loss = floor * 0.85 + 1.6 * math.exp(-5.0 * t) + rng.gauss(0, 0.01)
        val = None
        if (i + 1) % val_every == 0 or i == n_rows - 1:
            val = floor + 1.5 * math.exp(-4.5 * t) + abs(rng.gauss(0, 0.015)) + 0.002 * rng.random()
            val = round(val, 6)
        grad = abs(rng.gauss(1.0, 0.3))
        if diverge_at is not None and i >= diverge_at:
            train_loss = float("nan")
            grad = float("nan")
            if val is not None:
                val = float("nan")
        rows.append({"step": step, "epoch": step // steps_per_epoch, "train_loss": train_loss, "val_loss": val, "grad_norm": grad})
    r.metrics = rows
    r.metric_columns = ["step", "epoch", "train_loss", "val_loss", "grad_norm"]
    # Checkpoints every few rows (completed runs keep theirs).
    r.checkpoints = []
    if r.status == "completed":
        every = max(1, n_rows // rng.randrange(1, 5))
        r.checkpoints = [rows[i]["step"] for i in range(every - 1, n_rows, every)]
        if rows[-1]["step"] not in r.checkpoints:
            r.checkpoints.append(rows[-1]["step"])
    # Lines of stdout per metrics row: sizes from a few KB to a few hundred KB.
    r.lines_per_row = rng.choice([1, 1, 2, 3, 4, 6, 8, 12, 18, 25])
    r.stderr_bars_per_row = rng.choice([0, 1, 1, 2, 3])
    r.duration_s = round(n_rows * step_every * rng.uniform(0.05, 0.4), 1)


def csv_text(columns, rows):
    out = [",".join(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            if v is None:
                cells.append("")
            elif isinstance(v, int):
                cells.append(str(v))
            else:
                cells.append(fmt_float(v))
        out.append(",".join(cells))
    return "\n".join(out) + "\n"


def train_stdout(rng, r):
    lines = [
        f"[{r.started}] train.py run {r.id} on {r.host}",
        "config: " + json.dumps(params_of(r), sort_keys=True),
        f"loading dataset {r.dataset}: {DATASET_ROWS[r.dataset]} rows, 80/10/10 split",
        f"model {r.model}: building denoiser (dim 512, depth 6)",
    ]
    ckpts = set(r.checkpoints)
    for row in r.metrics:
        step = row["step"]
        for k in range(r.lines_per_row):
            sub = step - (r.lines_per_row - 1 - k) * max(1, 50 // r.lines_per_row)
            tl = row["train_loss"]
            tl_txt = "nan" if math.isnan(tl) else f"{tl + rng.gauss(0, 0.004):.4f}"
            lines.append(
                f"epoch {row['epoch']:3d} step {sub:6d} | train_loss {tl_txt} | lr {r.lr:.1e} | "
                f"{rng.uniform(800, 4000):7.1f} samples/s | mem {rng.uniform(3, 22):.1f}G"
            )
        if row["val_loss"] is not None:
            lines.append(f"validation @ step {step}: val_loss={fmt_float(row['val_loss'])}")
        if step in ckpts:
            lines.append(f"saved checkpoint to runs/{r.id}/checkpoints/step-{step}.pt")
    if r.status == "completed":
        finite = [row["val_loss"] for row in r.metrics if row["val_loss"] is not None and not math.isnan(row["val_loss"])]
        lines.append(f"training finished in {r.duration_s}s; {len(r.metrics)} evaluations; best val_loss={min(finite):.4f}")
    return "\n".join(lines) + "\n"


TRACEBACK_TRAIN = [
    "Traceback (most recent call last):",
    '  File "/workspace/tabgen/train.py", line 311, in <module>',
    "    main(cfg)",
    '  File "/workspace/tabgen/train.py", line 274, in main',
    "    loss = trainer.step(batch)",
    '  File "/workspace/tabgen/trainer.py", line 142, in step',
]


def failure_tail(rng, r):
    kind = rng.choice(["oom", "nan", "io"])
    if kind == "oom":
        return TRACEBACK_TRAIN + [
            "    out = self.model(x, t)",
            '  File "/opt/conda/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1511, in _wrapped_call_impl',
            "    return self._call_impl(*args, **kwargs)",
            f"torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate {rng.choice([2, 4, 8])}.00 GiB "
            f"(GPU 0; 23.69 GiB total capacity; {rng.uniform(18, 22):.2f} GiB already allocated)",
        ]
    if kind == "nan":
        return TRACEBACK_TRAIN + [
            "    raise FloatingPointError(f'loss is {loss}')",
            "FloatingPointError: loss is nan",
        ]
    return [
        "Traceback (most recent call last):",
        '  File "/workspace/tabgen/data.py", line 88, in load',
        "    return pd.read_parquet(path)",
        f"FileNotFoundError: [Errno 2] No such file or directory: '/data/{r.dataset}/part-{rng.randrange(0, 16):05d}.parquet'",
    ]


def interrupt_tail(rng, r, script):
    """A cancelled run's end: sometimes a DataLoader worker's traceback first
    (a first KeyboardInterrupt), then the main process's."""
    out = []
    if rng.random() < 0.5:
        out += [
            "Process Process-2:",
            "Traceback (most recent call last):",
            '  File "/opt/conda/lib/python3.11/multiprocessing/process.py", line 314, in _bootstrap',
            "    self.run()",
            '  File "/opt/conda/lib/python3.11/site-packages/torch/utils/data/_utils/worker.py", line 308, in _worker_loop',
            "    r = index_queue.get(timeout=MP_STATUS_CHECK_INTERVAL)",
            "KeyboardInterrupt",
        ]
        for _ in range(rng.randrange(1, 4)):
            out.append(f"Epoch {rng.randrange(1, 30)}: {rng.randrange(1, 99)}%|#####     | interrupted")
    out += [
        "Traceback (most recent call last):",
        f'  File "/workspace/tabgen/{script}", line {rng.randrange(200, 400)}, in <module>',
        "    main(cfg)",
        f'  File "/workspace/tabgen/{script}", line {rng.randrange(100, 200)}, in main',
        "    for batch in loader:",
        '  File "/opt/conda/lib/python3.11/site-packages/torch/utils/data/dataloader.py", line 631, in __next__',
        "    data = self._next_data()",
        "KeyboardInterrupt",
    ]
    if rng.random() < 0.7:
        out.append("wandb: Waiting for W&B process to finish... (failed 255). Press Control-C to abort syncing.")
    return out


def stderr_text(rng, r, script):
    lines = [
        "/opt/conda/lib/python3.11/site-packages/torch/cuda/__init__.py:611: UserWarning: Can't initialize NVML",
        "  warnings.warn(\"Can't initialize NVML\")",
    ]
    if r.job == "train":
        for row in r.metrics:
            for _ in range(r.stderr_bars_per_row):
                pct = rng.randrange(0, 100)
                lines.append(
                    f"Epoch {row['epoch']}: {pct:3d}%|{'#' * (pct // 10):<10}| {pct * 10}/1000 "
                    f"[00:{rng.randrange(10, 59)}<00:{rng.randrange(10, 59)}, {rng.uniform(20, 60):.2f}it/s]"
                )
            if rng.random() < 0.02:
                lines.append("/workspace/tabgen/trainer.py:97: UserWarning: grad norm clipped at 1.0")
    else:
        for row in r.metrics:
            lines.append(f"sampling: {rng.randrange(10, 100)}%|######    | round {row['step']}")
    if r.status == "failed":
        lines += failure_tail(rng, r)
    elif r.status == "cancelled":
        lines += interrupt_tail(rng, r, script)
    return "\n".join(lines) + "\n"


# ----- eval runs -----

def gen_eval(rng, r, train_by_key):
    n_rows = rng.randrange(10, 51)
    if r.status != "completed":
        n_rows = max(10, int(n_rows * rng.uniform(0.3, 0.8)))
    base_f = rng.uniform(0.62, 0.90)
    base_u = rng.uniform(0.55, 0.85)
    base_d = rng.uniform(0.55, 0.93)
    base_p = rng.uniform(0.8, 3.0)
    rows = []
    for i in range(n_rows):
        t = i / max(1, n_rows - 1)
        row = {
            "step": i + 1,
            "fidelity": round(base_f + 0.06 * t + rng.gauss(0, 0.012), 6),
            "utility": round(base_u + 0.04 * t + rng.gauss(0, 0.01), 6),
            "detection_roc_auc": round(base_d - 0.03 * t + rng.gauss(0, 0.01), 6) if i % 2 == 1 or i == n_rows - 1 else None,
            "privacy_dcr": round(base_p + rng.gauss(0, 0.05), 6),
        }
        rows.append(row)
    # Some runs log no fidelity in the last round (the latest is the one before).
    if n_rows > 2 and rng.random() < 0.15:
        rows[-1]["fidelity"] = None
    r.metrics = rows
    r.metric_columns = ["step", "fidelity", "utility", "detection_roc_auc", "privacy_dcr"]
    r.checkpoints = []
    r.loaded = None
    r.param_count = rng.randrange(2_000_000, 90_000_000)
    if r.model in SAMPLER_MODELS:
        candidates = train_by_key.get((r.model, r.dataset)) or train_by_key.get(r.model) or []
        earlier = [t for t in candidates if t.id < r.id] or candidates
        if earlier:
            src = rng.choice(earlier)
            r.loaded = (src, rng.choice(src.checkpoints))
    r.duration_s = round(n_rows * rng.uniform(20, 90), 1)


def eval_stdout(rng, r):
    lines = [
        f"[{r.started}] eval.py run {r.id} on {r.host}",
        "config: " + json.dumps(params_of(r), sort_keys=True),
        f"eval: model={r.model} dataset={r.dataset} samples={r.num_samples}",
    ]
    if r.loaded:
        src, step = r.loaded
        lines.append(f"sampler: scanning runs/{src.id}/checkpoints ({len(src.checkpoints)} files)")
        for s in src.checkpoints:
            lines.append(f"sampler:   candidate runs/{src.id}/checkpoints/step-{s}.pt")
        lines.append(f"sampler: loaded checkpoint from runs/{src.id}/checkpoints/step-{step}.pt")
        lines.append(f"sampler: model parameters: {r.param_count:,}")
    else:
        lines.append(f"fitting {r.model} inline ({r.param_count:,} parameters)")
    for row in r.metrics:
        for _ in range(rng.randrange(4, 30)):
            lines.append(f"  round {row['step']:3d} batch {rng.randrange(0, 64):3d}: generated {r.batch_size} rows in {rng.uniform(0.2, 3.0):.2f}s")
        f = row["fidelity"]
        lines.append(
            f"round {row['step']}: fidelity={'n/a' if f is None else f'{f:.4f}'} utility={row['utility']:.4f}"
        )
    det = [row["detection_roc_auc"] for row in r.metrics if row["detection_roc_auc"] is not None]
    if r.status == "completed":
        lines.append(f"detection method: {r.detection_method} (5-fold, roc_auc={det[-1]:.4f})")
        lines.append(f"privacy: dcr={r.metrics[-1]['privacy_dcr']:.4f}")
        lines.append(f"eval finished in {r.duration_s}s")
    return "\n".join(lines) + "\n"


# ----- files -----

def params_of(r):
    if r.job == "train":
        return {
            "model": r.model, "dataset": r.dataset, "lr": r.lr, "batch_size": r.batch_size, "seed": r.seed,
            "epochs": r.epochs, "optimizer": r.optimizer, "scheduler": r.scheduler,
        }
    return {
        "model": r.model, "dataset": r.dataset, "batch_size": r.batch_size, "seed": r.seed,
        "num_samples": r.num_samples,
    }


def meta_of(r):
    return {
        "run_id": r.id,
        "experiment": {"name": f"{r.model}-{r.dataset}-{r.job}", "script": f"{r.job}.py"},
        "job": r.job,
        "status": r.status,
        "started": r.started,
        "duration_s": r.duration_s,
        "host": r.host,
        "tags": r.tags,
    }


def checkpoint_bytes(rng, r, step):
    size = rng.randrange(2048, 8192)
    header = f"PTCKPT\x00run={r.id}\x00step={step}\x00".encode()
    return header + bytes(rng.getrandbits(8) for _ in range(size - len(header)))


CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv", ".log": "text/plain", ".pt": "application/octet-stream"}


def flatten(prefix, value, out):
    if isinstance(value, dict):
        for k in sorted(value):
            flatten(f"{prefix}.{k}" if prefix else k, value[k], out)
    else:
        out[prefix] = value


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(path, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8", "newline": ""})) as f:
        f.write(data)
    return data.encode() if isinstance(data, str) else data


def last_finite(values):
    for v in reversed(values):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return v
    return None


def generate(out, seed, n_runs, n_failed, n_cancelled):
    rng = random.Random(seed)
    runs = plan_runs(rng, n_runs, n_failed, n_cancelled)
    # Train runs first (eval runs load their checkpoints).
    train_by_key = {}
    for r in runs:
        if r.job == "train":
            gen_train(random.Random(f"{seed}-train-{r.id}"), r)
            if r.checkpoints:
                train_by_key.setdefault((r.model, r.dataset), []).append(r)
                train_by_key.setdefault(r.model, []).append(r)
    for r in runs:
        if r.job == "eval":
            gen_eval(random.Random(f"{seed}-eval-{r.id}"), r, train_by_key)

    root = os.path.join(out, "runs")
    if os.path.exists(root):
        shutil.rmtree(root)
    db_path = os.path.join(out, "corpus.sqlite")
    if os.path.exists(db_path):
        os.remove(db_path)
    db = sqlite3.connect(db_path)
    db.executescript(SCHEMA)
    attrs = {}
    total_bytes = 0
    n_files = 0
    blob_id = 0
    for r in runs:
        frng = random.Random(f"{seed}-files-{r.id}")
        d = os.path.join(root, str(r.id))
        script = f"{r.job}.py"
        files = {
            "params.json": json.dumps(params_of(r), indent=2, sort_keys=True) + "\n",
            "meta.json": json.dumps(meta_of(r), indent=2, sort_keys=True) + "\n",
            "metrics.csv": csv_text(r.metric_columns, r.metrics),
            "stdout.log": train_stdout(frng, r) if r.job == "train" else eval_stdout(frng, r),
            "stderr.log": stderr_text(frng, r, script),
            "git.json": json.dumps(r.git, indent=2, sort_keys=True) + "\n",
        }
        for step in r.checkpoints:
            files[f"checkpoints/step-{step}.pt"] = checkpoint_bytes(frng, r, step)
        r.sizes = {}
        r.texts = {}
        for name, data in files.items():
            raw = write_file(os.path.join(d, name), data)
            r.sizes[name] = len(raw)
            total_bytes += len(raw)
            n_files += 1
            if isinstance(data, str):
                r.texts[name] = data
            bid = None
            if name.endswith(".log"):
                blob_id += 1
                bid = blob_id
                db.execute("INSERT INTO blobs(blob_id, content) VALUES (?, ?)", (bid, data))
            ext = os.path.splitext(name)[1]
            db.execute(
                "INSERT INTO artifacts(run_id, name, path, size_bytes, sha256, content_type, blob_id) VALUES (?,?,?,?,?,?,?)",
                (r.id, name, f"runs/{r.id}/{name}", len(raw), hashlib.sha256(raw).hexdigest(), CONTENT_TYPES[ext], bid),
            )
            if name in ATTR_FILES:
                attrs[f"{r.id}/{name}"] = {"run": str(r.id), "status": r.status, "job": r.job}
        # Tables.
        m = meta_of(r)
        db.execute(
            "INSERT INTO runs(run_id, experiment, script, job, status, started, duration_s, host, tags) VALUES (?,?,?,?,?,?,?,?,?)",
            (r.id, m["experiment"]["name"], script, r.job, r.status, r.started, r.duration_s, r.host, json.dumps(r.tags)),
        )
        flat = {}
        flatten("", params_of(r), flat)
        db.executemany("INSERT INTO params(run_id, key, value) VALUES (?,?,?)", [(r.id, k, v) for k, v in flat.items()])
        rows = []
        for row in r.metrics:
            for c in r.metric_columns[1:]:
                v = row.get(c)
                if v is None:
                    continue
                rows.append((r.id, row["step"], c, None if isinstance(v, float) and math.isnan(v) else v))
        db.executemany("INSERT INTO metrics(run_id, step, name, value) VALUES (?,?,?,?)", rows)
        db.execute(
            "INSERT INTO git(run_id, commit_sha, branch, dirty, remote) VALUES (?,?,?,?,?)",
            (r.id, r.git["commit"], r.git["branch"], int(r.git["dirty"]), r.git["remote"]),
        )
    db.executescript(INDEXES)
    db.commit()
    metric_rows = db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    db.close()

    with open(os.path.join(out, "attrs.json"), "w") as f:
        json.dump(attrs, f, indent=1, sort_keys=True)
    oracle = compute_oracle(runs)
    with open(os.path.join(out, "oracle.json"), "w") as f:
        json.dump(oracle, f, indent=2, sort_keys=True)
    manifest = {
        "seed": seed,
        "runs": n_runs,
        "train_runs": sum(r.job == "train" for r in runs),
        "eval_runs": sum(r.job == "eval" for r in runs),
        "status": {s: sum(r.status == s for r in runs) for s in ["completed", "failed", "cancelled"]},
        "files": n_files,
        "bytes": total_bytes,
        "attr_files": len(attrs),
        "metric_rows_sql": metric_rows,
        "largest_stdout_bytes": max(r.sizes["stdout.log"] for r in runs),
        "smallest_stdout_bytes": min(r.sizes["stdout.log"] for r in runs),
        "sqlite_bytes": os.path.getsize(db_path),
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return manifest


SCHEMA = """
CREATE TABLE runs (
  run_id INTEGER PRIMARY KEY,
  experiment TEXT NOT NULL,   -- e.g. tabdiff-adult-train
  script TEXT NOT NULL,       -- train.py | eval.py
  job TEXT NOT NULL,          -- train | eval
  status TEXT NOT NULL,       -- completed | failed | cancelled
  started TEXT NOT NULL,      -- ISO 8601 UTC
  duration_s REAL,
  host TEXT,
  tags TEXT                   -- JSON array
);
CREATE TABLE params (
  run_id INTEGER NOT NULL REFERENCES runs(run_id),
  key TEXT NOT NULL,          -- dotted, e.g. optimizer.name
  value                       -- typed (INTEGER, REAL or TEXT)
);
CREATE TABLE metrics (
  run_id INTEGER NOT NULL REFERENCES runs(run_id),
  step INTEGER NOT NULL,
  name TEXT NOT NULL,
  value REAL                  -- NULL where the logged value was nan
);
CREATE TABLE artifacts (
  run_id INTEGER NOT NULL REFERENCES runs(run_id),
  name TEXT NOT NULL,         -- e.g. stdout.log, checkpoints/step-400.pt
  path TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  content_type TEXT NOT NULL,
  blob_id INTEGER REFERENCES blobs(blob_id)  -- text of logs; read with read_blob / grep_blob
);
CREATE TABLE blobs (
  blob_id INTEGER PRIMARY KEY,
  content TEXT NOT NULL
);
CREATE TABLE git (
  run_id INTEGER PRIMARY KEY REFERENCES runs(run_id),
  commit_sha TEXT NOT NULL,
  branch TEXT NOT NULL,
  dirty INTEGER NOT NULL,     -- 0 | 1
  remote TEXT
);
"""

INDEXES = """
CREATE INDEX metrics_run_name_step ON metrics(run_id, name, step);
CREATE INDEX params_run_key ON params(run_id, key);
CREATE INDEX artifacts_run_name ON artifacts(run_id, name);
"""


# ----- the answers -----

def compute_oracle(runs):
    def col(r, c):
        return [row.get(c) for row in r.metrics]

    # T1: the 5 completed train runs with the lowest minimum finite val_loss.
    t1 = []
    for r in runs:
        if r.job != "train" or r.status != "completed":
            continue
        finite = [v for v in col(r, "val_loss") if v is not None and not math.isnan(v)]
        t1.append((min(finite), r))
    t1.sort(key=lambda x: (x[0], x[1].id))
    assert t1[TOP_K - 1][0] < t1[TOP_K][0], "T1 has a tie at the cut"
    t1_answer = [
        {"run": r.id, "val_loss_min": v, "lr": r.lr, "batch_size": r.batch_size,
         "stdout_bytes": r.sizes["stdout.log"], "git_dirty": r.git["dirty"]}
        for v, r in t1[:TOP_K]
    ]

    # T2: the 5 completed eval runs with the highest latest fidelity.
    t2 = []
    for r in runs:
        if r.job != "eval" or r.status != "completed":
            continue
        t2.append((last_finite(col(r, "fidelity")), r))
    t2.sort(key=lambda x: (-x[0], x[1].id))
    assert t2[TOP_K - 1][0] > t2[TOP_K][0], "T2 has a tie at the cut"
    t2_answer = [
        {"run": r.id, "fidelity": f, "utility": last_finite(col(r, "utility")),
         "detection_roc_auc": last_finite(col(r, "detection_roc_auc")),
         "privacy_dcr": last_finite(col(r, "privacy_dcr")), "stderr_bytes": r.sizes["stderr.log"]}
        for f, r in t2[:TOP_K]
    ]

    # T3: every eval run of T3_MODEL on T3_DATASET: the checkpoint it loaded
    # and its parameter count, as its stdout says.
    t3_answer = {}
    for r in runs:
        if r.job == "eval" and r.model == T3_MODEL and r.dataset == T3_DATASET:
            assert r.loaded, f"T3 run {r.id} loaded no checkpoint"
            src, step = r.loaded
            t3_answer[str(r.id)] = {"checkpoint": f"runs/{src.id}/checkpoints/step-{step}.pt", "parameters": r.param_count}
            # Cross-check against the text.
            assert f"loaded checkpoint from runs/{src.id}/checkpoints/step-{step}.pt" in r.texts["stdout.log"]
    assert t3_answer, "T3 has an empty cohort"

    # T4: the completed eval run with the highest latest detection_roc_auc and its method.
    t4 = sorted(
        ((last_finite(col(r, "detection_roc_auc")), r) for r in runs if r.job == "eval" and r.status == "completed"),
        key=lambda x: (-x[0], x[1].id),
    )
    assert t4[0][0] > t4[1][0], "T4 has a tie"
    best = t4[0][1]
    t4_answer = {"run": best.id, "detection_roc_auc": t4[0][0], "method": best.detection_method}

    # T5: every non-completed run: status, stderr size, whether stderr
    # contains KeyboardInterrupt (case-insensitive) and the line of its last occurrence.
    t5_answer = {}
    for r in runs:
        if r.status == "completed":
            continue
        last = None
        for i, line in enumerate(r.texts["stderr.log"].split("\n"), start=1):
            if "keyboardinterrupt" in line.lower():
                last = i
        t5_answer[str(r.id)] = {"status": r.status, "stderr_bytes": r.sizes["stderr.log"],
                                "keyboard_interrupt": last is not None, "last_line": last}

    return {
        "tasks": {
            "T1": {"name": "train_top_configs_report",
                   "question": f"The {TOP_K} completed train runs with the lowest minimum (finite) val_loss: lr, batch_size, stdout.log size, git dirty.",
                   "answer": t1_answer},
            "T2": {"name": "eval_fidelity_leaderboard",
                   "question": f"The {TOP_K} completed eval runs with the highest latest fidelity, with latest utility, detection_roc_auc, privacy_dcr and stderr.log size.",
                   "answer": t2_answer},
            "T3": {"name": "checkpoint_provenance",
                   "question": f"For every eval run of model {T3_MODEL} on dataset {T3_DATASET}: the checkpoint it loaded and the model's parameter count (both only in stdout.log).",
                   "model": T3_MODEL, "dataset": T3_DATASET, "answer": t3_answer},
            "T4": {"name": "best_detection_eval_method_audit",
                   "question": "The completed eval run with the highest latest detection_roc_auc, and the detection method its stdout.log names.",
                   "answer": t4_answer},
            "T5": {"name": "interrupt_triage",
                   "question": "For every non-completed run: status, stderr.log size, whether stderr.log contains KeyboardInterrupt, and the line number of its last occurrence.",
                   "answer": t5_answer},
        },
        "top_k": TOP_K,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (runs/, corpus.sqlite, oracle.json, attrs.json)")
    ap.add_argument("--seed", type=int, default=20260610)
    ap.add_argument("--runs", type=int, default=875)
    ap.add_argument("--failed", type=int, default=8)
    ap.add_argument("--cancelled", type=int, default=6)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    m = generate(a.out, a.seed, a.runs, a.failed, a.cancelled)
    print(json.dumps(m, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
