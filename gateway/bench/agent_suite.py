#!/usr/bin/env python3
"""Scripted token-cost suite: five agent tasks (T1-T5) answered twice, once
through the NoKV gateway's verbs and once through a SQLite "raw SQL" arm,
each by a FIXED sequence of tool calls (what a competent agent would do),
its final answer computed from the tool outputs and checked against
oracle.json (written by corpus.py from the generated data).

Per task and arm it records the tool calls, the bytes of tool output (the
JSON text a model would read), approximate tokens (bytes / 4) and wall time.
No model is involved: this measures the cost of the tool outputs along a
good path, not an agent's behaviour.

NoKV arm: POST /v1/<verb> on the gateway (ls, stat, catalog, find,
aggregate, read, grep); output bytes = the HTTP response body.

SQL arm (modelled on the original benchmark's sqlite_raw_v1 tools):
  schema()                      table DDL from sqlite_master
  query(sql)                    read-only SQL, at most 100 rows returned
  read_blob(blob_id, offset, length)  a byte range of a log's text
  grep_blob(blob_id, pattern)   case-insensitive literal search of one log:
                                matching lines (at most 240 characters) with
                                line numbers, at most 100 hits
output bytes = the compact JSON of each result.

Python 3.11 standard library only. Exit status 1 if any answer is wrong.
"""

import argparse
import json
import math
import re
import sqlite3
import sys
import time
import urllib.error
import urllib.request

SQL_ROW_LIMIT = 100
GREP_LIMIT = 100
SNIPPET_CHARS = 240


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Transcript:
    """The tool calls of one task in one arm."""

    def __init__(self):
        self.calls = []

    def add(self, tool, args, output_text, seconds, error=None):
        self.calls.append({
            "tool": tool,
            "args": args,
            "args_bytes": len(compact(args).encode()),
            "output_bytes": len(output_text.encode()),
            "seconds": round(seconds, 4),
            "output": output_text,
            **({"error": error} if error else {}),
        })

    def summary(self):
        out_bytes = sum(c["output_bytes"] for c in self.calls)
        return {
            "calls": len(self.calls),
            "output_bytes": out_bytes,
            "approx_tokens": round(out_bytes / 4),
            "args_bytes": sum(c["args_bytes"] for c in self.calls),
            "seconds": round(sum(c["seconds"] for c in self.calls), 3),
        }


class GatewayError(Exception):
    pass


class NoKV:
    """The gateway's verbs over HTTP/JSON."""

    def __init__(self, base, transcript):
        self.base = base.rstrip("/")
        self.t = transcript

    def call(self, verb, args):
        body = json.dumps(args).encode()
        req = urllib.request.Request(f"{self.base}/v1/{verb}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        start = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                text = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            status = e.code
        seconds = time.monotonic() - start
        if status != 200:
            self.t.add(verb, args, text, seconds, error=f"HTTP {status}")
            raise GatewayError(f"{verb} {compact(args)} -> HTTP {status}: {text[:2000]}")
        self.t.add(verb, args, text, seconds)
        return json.loads(text)

    def find_all(self, args):
        """A find, paged with next_cursor until the end."""
        matches = []
        cursor = None
        while True:
            page = self.call("find", {**args, **({"cursor": cursor} if cursor else {})})
            matches += page["matches"]
            cursor = page.get("next_cursor")
            if not cursor:
                return matches

    def grep_all(self, args):
        hits = []
        cursor = None
        while True:
            page = self.call("grep", {**args, **({"cursor": cursor} if cursor else {})})
            hits += page["matches"]
            cursor = page.get("next_cursor")
            if not cursor:
                return hits


class SQLArm:
    """Raw SQLite tools: schema, bounded read-only SQL, blob reads and greps."""

    def __init__(self, path, transcript):
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.db.execute("PRAGMA query_only = 1")
        self.t = transcript

    def _record(self, tool, args, result, start):
        text = compact(result)
        self.t.add(tool, args, text, time.monotonic() - start)
        return result

    def schema(self):
        start = time.monotonic()
        rows = self.db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
        return self._record("schema", {}, {"tables": [{"name": n, "sql": s} for n, s in rows]}, start)

    def query(self, sql):
        start = time.monotonic()
        cur = self.db.execute(sql)
        columns = [d[0] for d in cur.description]
        rows = cur.fetchmany(SQL_ROW_LIMIT + 1)
        truncated = len(rows) > SQL_ROW_LIMIT
        rows = [list(r) for r in rows[:SQL_ROW_LIMIT]]
        result = {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": truncated}
        return self._record("query", {"sql": sql}, result, start)

    def read_blob(self, blob_id, offset=0, length=65536):
        start = time.monotonic()
        (content,) = self.db.execute("SELECT content FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone()
        data = content.encode()
        chunk = data[offset:offset + length]
        result = {"blob_id": blob_id, "size_bytes": len(data), "offset": offset,
                  "text": chunk.decode(errors="replace"), "truncated": offset + length < len(data)}
        return self._record("read_blob", {"blob_id": blob_id, "offset": offset, "length": length}, result, start)

    def grep_blob(self, blob_id, pattern):
        start = time.monotonic()
        (content,) = self.db.execute("SELECT content FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone()
        needle = pattern.lower()
        matches = []
        truncated = False
        lines = content.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines, start=1):
            if needle in line.lower():
                if len(matches) == GREP_LIMIT:
                    truncated = True
                    break
                matches.append({"line_number": i, "line": line[:SNIPPET_CHARS]})
        result = {"blob_id": blob_id, "pattern": pattern, "matches": matches, "truncated": truncated}
        return self._record("grep_blob", {"blob_id": blob_id, "pattern": pattern}, result, start)


# The SQL arm's tools as a model would be given them (for the fixed
# per-conversation cost of tool definitions; the NoKV arm's are GET /v1/tools).
SQL_TOOLS = {"tools": [
    {"name": "schema", "description": "List the database's tables with their CREATE statements (from sqlite_master).",
     "input_schema": {"type": "object", "additionalProperties": False, "properties": {}}},
    {"name": "query", "description": f"Run one read-only SQL statement (SQLite); at most {SQL_ROW_LIMIT} rows are returned, with truncated=true when there were more.",
     "input_schema": {"type": "object", "additionalProperties": False, "required": ["sql"],
                      "properties": {"sql": {"type": "string"}}}},
    {"name": "read_blob", "description": "Read a byte range of a blob's text (blobs.content, e.g. a log referenced by artifacts.blob_id).",
     "input_schema": {"type": "object", "additionalProperties": False, "required": ["blob_id"],
                      "properties": {"blob_id": {"type": "integer"}, "offset": {"type": "integer", "minimum": 0, "default": 0},
                                     "length": {"type": "integer", "minimum": 1, "maximum": 65536, "default": 65536}}}},
    {"name": "grep_blob", "description": f"Case-insensitive literal search of one blob's lines: line numbers and lines (at most {SNIPPET_CHARS} characters), at most {GREP_LIMIT} hits.",
     "input_schema": {"type": "object", "additionalProperties": False, "required": ["blob_id", "pattern"],
                      "properties": {"blob_id": {"type": "integer"}, "pattern": {"type": "string", "minLength": 1}}}},
]}


def tool_definition_bytes(gateway):
    """Bytes of each arm's tool definitions (sent once per conversation; not in the per-task totals)."""
    try:
        with urllib.request.urlopen(f"{gateway.rstrip('/')}/v1/tools", timeout=30) as resp:
            nokv = len(resp.read())
    except (urllib.error.URLError, OSError):
        nokv = None
    return {"nokv": nokv, "sql": len(compact(SQL_TOOLS).encode())}


# ----- helpers -----

def run_of(path, root):
    """The run id in ROOT/<id>/...."""
    rest = path[len(root):].lstrip("/")
    return int(rest.split("/", 1)[0])


def pred(field, op, value=None):
    p = {"field": field, "op": op}
    if value is not None:
        p["value"] = value
    return p


CHECKPOINT_RE = re.compile(r"loaded checkpoint from (\S+)", re.I)
PARAMS_RE = re.compile(r"model parameters:\s*([\d,]+)", re.I)
METHOD_RE = re.compile(r"detection method:\s*(\S+)", re.I)


# ----- the NoKV arm -----

def nokv_t1(g, root, k):
    g.call("catalog", {"path": root})
    top = g.call("find", {
        "path": root,
        "predicates": [pred("name", "eq", "metrics.csv"), pred("job", "eq", "train"), pred("status", "eq", "completed")],
        "sort": [{"field": "val_loss.min", "direction": "asc"}],
        "fields": ["val_loss.min"],
        "limit": k,
    })["matches"]
    ids = [run_of(m["path"], root) for m in top]
    wanted = [f"{root}/{i}/{n}" for i in ids for n in ("params.json", "stdout.log", "git.json")]
    rows = g.find_all({
        "path": root,
        "predicates": [pred("path", "in", wanted)],
        "fields": ["lr", "batch_size", "size_bytes", "dirty"],
        "limit": len(wanted),
    })
    by = {(run_of(r["path"], root), r["path"].rsplit("/", 1)[1]): r["values"] for r in rows}
    return [{
        "run": i,
        "val_loss_min": m["values"]["val_loss.min"],
        "lr": by[(i, "params.json")]["lr"],
        "batch_size": by[(i, "params.json")]["batch_size"],
        "stdout_bytes": by[(i, "stdout.log")]["size_bytes"],
        "git_dirty": by[(i, "git.json")]["dirty"],
    } for i, m in zip(ids, top)]


def nokv_t2(g, root, k):
    g.call("catalog", {"path": root})
    cols = ["fidelity.last", "utility.last", "detection_roc_auc.last", "privacy_dcr.last"]
    top = g.call("find", {
        "path": root,
        "predicates": [pred("name", "eq", "metrics.csv"), pred("job", "eq", "eval"), pred("status", "eq", "completed")],
        "sort": [{"field": "fidelity.last", "direction": "desc"}],
        "fields": cols,
        "limit": k,
    })["matches"]
    ids = [run_of(m["path"], root) for m in top]
    sizes = g.find_all({
        "path": root,
        "predicates": [pred("path", "in", [f"{root}/{i}/stderr.log" for i in ids])],
        "fields": ["size_bytes"],
        "limit": len(ids),
    })
    size = {run_of(r["path"], root): r["values"]["size_bytes"] for r in sizes}
    return [{
        "run": i,
        "fidelity": m["values"]["fidelity.last"],
        "utility": m["values"]["utility.last"],
        "detection_roc_auc": m["values"]["detection_roc_auc.last"],
        "privacy_dcr": m["values"]["privacy_dcr.last"],
        "stderr_bytes": size[i],
    } for i, m in zip(ids, top)]


def nokv_t3(g, root, model, dataset):
    g.call("catalog", {"path": root})
    cohort = g.find_all({
        "path": root,
        "predicates": [pred("name", "eq", "params.json"), pred("job", "eq", "eval"),
                       pred("model", "eq", model), pred("dataset", "eq", dataset)],
        "limit": 100,
    })
    out = {}
    for m in cohort:
        rid = run_of(m["path"], root)
        log = f"{root}/{rid}/stdout.log"
        ck = g.grep_all({"path": log, "pattern": "loaded checkpoint from", "recursive": False})
        pc = g.grep_all({"path": log, "pattern": "model parameters:", "recursive": False})
        out[str(rid)] = {
            "checkpoint": CHECKPOINT_RE.search(ck[-1]["snippet"]).group(1) if ck else None,
            "parameters": int(PARAMS_RE.search(pc[-1]["snippet"]).group(1).replace(",", "")) if pc else None,
        }
    return out


def nokv_t4(g, root):
    g.call("catalog", {"path": root})
    best = g.call("find", {
        "path": root,
        "predicates": [pred("name", "eq", "metrics.csv"), pred("job", "eq", "eval"), pred("status", "eq", "completed")],
        "sort": [{"field": "detection_roc_auc.last", "direction": "desc"}],
        "fields": ["detection_roc_auc.last"],
        "limit": 1,
    })["matches"][0]
    rid = run_of(best["path"], root)
    hits = g.grep_all({"path": f"{root}/{rid}/stdout.log", "pattern": "detection method:", "recursive": False})
    return {"run": rid, "detection_roc_auc": best["values"]["detection_roc_auc.last"],
            "method": METHOD_RE.search(hits[-1]["snippet"]).group(1) if hits else None}


def nokv_t5(g, root):
    g.call("catalog", {"path": root})
    logs = g.find_all({
        "path": root,
        "predicates": [pred("name", "eq", "stderr.log"), pred("status", "ne", "completed")],
        "fields": ["status", "size_bytes"],
        "limit": 100,
    })
    out = {}
    for m in logs:
        rid = run_of(m["path"], root)
        hits = g.grep_all({"path": m["path"], "pattern": "KeyboardInterrupt", "recursive": False})
        out[str(rid)] = {
            "status": m["values"]["status"],
            "stderr_bytes": m["values"]["size_bytes"],
            "keyboard_interrupt": bool(hits),
            "last_line": hits[-1]["line_number"] if hits else None,
        }
    return out


# ----- the SQL arm -----

def sql_t1(s, k):
    s.schema()
    s.query("SELECT DISTINCT key FROM params ORDER BY key")
    s.query("SELECT DISTINCT name FROM metrics ORDER BY name")
    res = s.query(f"""
WITH best AS (
  SELECT m.run_id, MIN(m.value) AS val_loss_min
  FROM metrics m JOIN runs r ON r.run_id = m.run_id
  WHERE r.job = 'train' AND r.status = 'completed' AND m.name = 'val_loss' AND m.value IS NOT NULL
  GROUP BY m.run_id
  ORDER BY val_loss_min, m.run_id
  LIMIT {k})
SELECT b.run_id, b.val_loss_min,
  (SELECT value FROM params p WHERE p.run_id = b.run_id AND p.key = 'lr') AS lr,
  (SELECT value FROM params p WHERE p.run_id = b.run_id AND p.key = 'batch_size') AS batch_size,
  (SELECT size_bytes FROM artifacts a WHERE a.run_id = b.run_id AND a.name = 'stdout.log') AS stdout_bytes,
  g.dirty
FROM best b JOIN git g ON g.run_id = b.run_id
ORDER BY b.val_loss_min, b.run_id""")
    return [{"run": r[0], "val_loss_min": r[1], "lr": r[2], "batch_size": r[3], "stdout_bytes": r[4],
             "git_dirty": bool(r[5])} for r in res["rows"]]


LATEST_SQL = """
  SELECT m.run_id, m.name, m.value
  FROM metrics m JOIN runs r ON r.run_id = m.run_id
  WHERE r.job = 'eval' AND r.status = 'completed' AND m.value IS NOT NULL {extra}
    AND m.step = (SELECT MAX(m2.step) FROM metrics m2
                  WHERE m2.run_id = m.run_id AND m2.name = m.name AND m2.value IS NOT NULL)"""


def sql_t2(s, k):
    s.schema()
    s.query("SELECT DISTINCT name FROM metrics ORDER BY name")
    res = s.query(f"""
WITH latest AS ({LATEST_SQL.format(extra="")}),
wide AS (
  SELECT run_id,
    MAX(CASE WHEN name = 'fidelity' THEN value END) AS fidelity,
    MAX(CASE WHEN name = 'utility' THEN value END) AS utility,
    MAX(CASE WHEN name = 'detection_roc_auc' THEN value END) AS detection_roc_auc,
    MAX(CASE WHEN name = 'privacy_dcr' THEN value END) AS privacy_dcr
  FROM latest GROUP BY run_id)
SELECT w.run_id, w.fidelity, w.utility, w.detection_roc_auc, w.privacy_dcr, a.size_bytes AS stderr_bytes
FROM wide w JOIN artifacts a ON a.run_id = w.run_id AND a.name = 'stderr.log'
ORDER BY w.fidelity DESC, w.run_id
LIMIT {k}""")
    return [{"run": r[0], "fidelity": r[1], "utility": r[2], "detection_roc_auc": r[3], "privacy_dcr": r[4],
             "stderr_bytes": r[5]} for r in res["rows"]]


def sql_t3(s, model, dataset):
    s.schema()
    s.query("SELECT DISTINCT key FROM params ORDER BY key")
    cohort = s.query(f"""
SELECT r.run_id, a.blob_id
FROM runs r
JOIN params pm ON pm.run_id = r.run_id AND pm.key = 'model' AND pm.value = '{model}'
JOIN params pd ON pd.run_id = r.run_id AND pd.key = 'dataset' AND pd.value = '{dataset}'
JOIN artifacts a ON a.run_id = r.run_id AND a.name = 'stdout.log'
WHERE r.job = 'eval'
ORDER BY r.run_id""")
    assert not cohort["truncated"], "T3 cohort above the SQL row limit"
    out = {}
    for rid, blob in cohort["rows"]:
        ck = s.grep_blob(blob, "loaded checkpoint from")["matches"]
        pc = s.grep_blob(blob, "model parameters:")["matches"]
        out[str(rid)] = {
            "checkpoint": CHECKPOINT_RE.search(ck[-1]["line"]).group(1) if ck else None,
            "parameters": int(PARAMS_RE.search(pc[-1]["line"]).group(1).replace(",", "")) if pc else None,
        }
    return out


def sql_t4(s):
    s.schema()
    s.query("SELECT DISTINCT name FROM metrics ORDER BY name")
    res = s.query(f"""
WITH latest AS ({LATEST_SQL.format(extra="AND m.name = 'detection_roc_auc'")})
SELECT l.run_id, l.value AS detection_roc_auc, a.blob_id
FROM latest l JOIN artifacts a ON a.run_id = l.run_id AND a.name = 'stdout.log'
ORDER BY l.value DESC, l.run_id
LIMIT 1""")
    rid, auc, blob = res["rows"][0]
    hits = s.grep_blob(blob, "detection method:")["matches"]
    return {"run": rid, "detection_roc_auc": auc, "method": METHOD_RE.search(hits[-1]["line"]).group(1) if hits else None}


def sql_t5(s):
    s.schema()
    res = s.query("""
SELECT r.run_id, r.status, a.size_bytes AS stderr_bytes, a.blob_id
FROM runs r JOIN artifacts a ON a.run_id = r.run_id AND a.name = 'stderr.log'
WHERE r.status <> 'completed'
ORDER BY r.run_id""")
    assert not res["truncated"], "T5 cohort above the SQL row limit"
    out = {}
    for rid, status, size, blob in res["rows"]:
        hits = s.grep_blob(blob, "KeyboardInterrupt")["matches"]
        out[str(rid)] = {"status": status, "stderr_bytes": size, "keyboard_interrupt": bool(hits),
                         "last_line": hits[-1]["line_number"] if hits else None}
    return out


# ----- checking -----

def same(a, b, where="answer"):
    """Deep equality with a float tolerance; returns a list of differences."""
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if type(a) is type(b) and a == b else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        diffs = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                diffs.append(f"{where}.{key}: {'missing' if key not in a else 'unexpected'}")
            else:
                diffs += same(a[key], b[key], f"{where}.{key}")
        return diffs
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        diffs = []
        for i, (x, y) in enumerate(zip(a, b)):
            diffs += same(x, y, f"{where}[{i}]")
        return diffs
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gateway", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--sqlite", required=True, help="corpus.sqlite")
    ap.add_argument("--oracle", required=True, help="oracle.json")
    ap.add_argument("--root", default="/bench/runs", help="where the runs were published in NoKV")
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--tasks", default="T1,T2,T3,T4,T5")
    a = ap.parse_args(argv)
    root = a.root.rstrip("/")
    with open(a.oracle) as f:
        oracle = json.load(f)
    k = oracle["top_k"]
    tasks = oracle["tasks"]
    t3 = tasks["T3"]
    plans = {
        "T1": (lambda g: nokv_t1(g, root, k), lambda s: sql_t1(s, k)),
        "T2": (lambda g: nokv_t2(g, root, k), lambda s: sql_t2(s, k)),
        "T3": (lambda g: nokv_t3(g, root, t3["model"], t3["dataset"]), lambda s: sql_t3(s, t3["model"], t3["dataset"])),
        "T4": (lambda g: nokv_t4(g, root), sql_t4),
        "T5": (lambda g: nokv_t5(g, root), sql_t5),
    }
    results = {"gateway": a.gateway, "root": root, "sql_row_limit": SQL_ROW_LIMIT,
               "tokens": "approximate: output bytes / 4",
               "tool_definition_bytes": tool_definition_bytes(a.gateway), "tasks": {}}
    failures = 0
    for tid in a.tasks.split(","):
        entry = {"name": tasks[tid]["name"], "question": tasks[tid]["question"], "arms": {}}
        for arm, plan in zip(("nokv", "sql"), plans[tid]):
            tr = Transcript()
            error = None
            answer = None
            try:
                if arm == "nokv":
                    answer = plan(NoKV(a.gateway, tr))
                else:
                    answer = plan(SQLArm(a.sqlite, tr))
                diffs = same(answer, tasks[tid]["answer"])
            except Exception as e:  # a tool error or a malformed answer fails the task
                error = f"{type(e).__name__}: {e}"
                diffs = [error]
            ok = not diffs
            failures += not ok
            entry["arms"][arm] = {"correct": ok, **tr.summary(), "differences": diffs[:20],
                                  "answer": answer, "transcript": tr.calls}
            s = entry["arms"][arm]
            print(f"{tid} {arm:4s} {'PASS' if ok else 'FAIL'}  calls={s['calls']:3d}  bytes={s['output_bytes']:8d}  "
                  f"~tokens={s['approx_tokens']:7d}  {s['seconds']:.2f}s", flush=True)
            for d in diffs[:10]:
                print(f"    {d}", flush=True)
        results["tasks"][tid] = entry

    totals = {arm: {"calls": 0, "output_bytes": 0, "approx_tokens": 0, "args_bytes": 0, "seconds": 0.0, "correct": 0}
              for arm in ("nokv", "sql")}
    for entry in results["tasks"].values():
        for arm, s in entry["arms"].items():
            for key in ("calls", "output_bytes", "approx_tokens", "args_bytes", "seconds"):
                totals[arm][key] += s[key]
            totals[arm]["correct"] += s["correct"]
    for t in totals.values():
        t["seconds"] = round(t["seconds"], 3)
    results["totals"] = totals
    by_tool = {"nokv": {}, "sql": {}}
    for entry in results["tasks"].values():
        for arm, s in entry["arms"].items():
            for c in s["transcript"]:
                b = by_tool[arm].setdefault(c["tool"], {"calls": 0, "output_bytes": 0, "seconds": 0.0})
                b["calls"] += 1
                b["output_bytes"] += c["output_bytes"]
                b["seconds"] = round(b["seconds"] + c["seconds"], 4)
    results["by_tool"] = by_tool
    results["all_correct"] = failures == 0
    table = markdown(results)
    results["table"] = table
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(table)
    return 1 if failures else 0


def markdown(results):
    lines = [
        "| Task | Arm | Correct | Tool calls | Output bytes | ~Tokens (bytes/4) | Args bytes | Wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tid, entry in results["tasks"].items():
        for arm, label in (("nokv", "NoKV gateway"), ("sql", "SQLite")):
            s = entry["arms"][arm]
            lines.append(f"| {tid} {entry['name']} | {label} | {'yes' if s['correct'] else 'NO'} | {s['calls']} | "
                         f"{s['output_bytes']:,} | {s['approx_tokens']:,} | {s['args_bytes']:,} | {s['seconds']:.2f} |")
    t = results["totals"]
    n = len(results["tasks"])
    for arm, label in (("nokv", "NoKV gateway"), ("sql", "SQLite")):
        s = t[arm]
        lines.append(f"| **total** | {label} | {s['correct']}/{n} | {s['calls']} | {s['output_bytes']:,} | "
                     f"{s['approx_tokens']:,} | {s['args_bytes']:,} | {s['seconds']:.2f} |")
    if t["nokv"]["output_bytes"] and t["sql"]["output_bytes"]:
        lines.append("")
        lines.append(f"Output bytes, NoKV / SQLite: {t['nokv']['output_bytes'] / t['sql']['output_bytes']:.2f}x "
                     f"(SQLite / NoKV: {t['sql']['output_bytes'] / t['nokv']['output_bytes']:.2f}x); "
                     f"tool calls: NoKV {t['nokv']['calls']}, SQLite {t['sql']['calls']}.")
    d = results["tool_definition_bytes"]
    lines.append(f"Tool definitions (sent once per conversation, not counted above): NoKV {d['nokv']} bytes "
                 f"(GET /v1/tools), SQLite {d['sql']} bytes.")
    lines.append("")
    lines.append("| Arm | Tool | Calls | Output bytes | Mean bytes/call | Wall time (s) |")
    lines.append("|---|---|---|---|---|---|")
    for arm, label in (("nokv", "NoKV gateway"), ("sql", "SQLite")):
        for tool, b in results["by_tool"][arm].items():
            lines.append(f"| {label} | {tool} | {b['calls']} | {b['output_bytes']:,} | "
                         f"{round(b['output_bytes'] / b['calls']):,} | {b['seconds']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
