"""Benchmark: `npu-advise analyze` end to end and the Kineto load alone, side by side with
HolisticTraceAnalysis (HTA), on a real 216k-event trace and on a 10x replicated copy (~2.2M events).

    python benchmarks/bench_analyze.py [--copies 10] [--repeat 3] [--skip-hta] [--skip-big]

Every number is measured here, in a fresh child process per run: wall seconds (interpreter start and
imports included for end-to-end runs) and peak RSS (the child's ru_maxrss). The replicated trace and
HTA's virtual environment are made once under `.bench/` (git-ignored). HTA is pinned to 0.5.0, the
version of the figures in ANCHORS.md; its venv gets `torch==2.13.0` first so pip takes the local CPU
wheel. Results are printed as a table and written to `.bench/results.json`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "kineto"
TRACE = DATA / "hta_df_index_resolver_v100_rank1.json.gz"
BENCH = REPO / ".bench"
HTA_VENV = BENCH / "hta-venv"
HTA_VERSION = "0.5.0"

# Runs CMD in a child and reports its wall time and peak RSS (ru_maxrss of the only child it waits
# for, so earlier, bigger runs cannot leak into the figure).
_MEASURE = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
print(json.dumps({"rc": p.returncode, "wall_s": wall, "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "stdout": p.stdout[-4000:], "stderr": p.stderr[-4000:]}))
"""

# Big traces are decoded with a forked worker process: its own peak RSS (pages shared with the parent
# counted in both) is reported next to the loading process's, since the measured peak is the larger one.
_LOAD_ONLY = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from npu_advise.load.kineto import load_kineto
t1 = time.perf_counter()
tr = load_kineto(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "ops": len(tr.ops), "runtime": len(tr.runtime),
                  "kernels": len(tr.kernels), "steps": len(tr.steps),
                  "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

_HTA = r"""
import json, os, sys, time, logging
logging.disable(logging.WARNING)
t0 = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
t1 = time.perf_counter()
a = TraceAnalysis(trace_dir=sys.argv[1])
t2 = time.perf_counter()
tb = a.get_temporal_breakdown(visualize=False)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "temporal_s": t3 - t2, "rows": int(len(tb))}))
"""


def measure(cmd: list, timeout: float = 900) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, cmd)], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"measuring {cmd} failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    if res["rc"] != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {res['rc']}: {res['stderr'][-1500:]}")
    inner = res["stdout"].strip().splitlines()
    if inner:
        try:
            res.update(json.loads(inner[-1]))
        except ValueError:
            pass
    return res


def best_of(cmd: list, repeat: int, timeout: float = 900) -> dict:
    """The fastest of `repeat` runs (the machine is shared; the minimum is the least disturbed run)."""
    runs = [measure(cmd, timeout) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["wall_s"])
    best["runs_wall_s"] = [round(r["wall_s"], 3) for r in runs]
    best["peak_mb"] = max(r["peak_mb"] for r in runs)
    return best


# ---- the replicated trace ------------------------------------------------------------------------------

_ID_ARGS = ("External id", "correlation", "Python id", "Python parent id", "Ev Idx")


def make_replicated(src: Path, dst: Path, copies: int) -> dict:
    """Write `copies` back-to-back copies of src's events into dst (gzip): copy k is shifted in time by
    k spans and its ids (External id, correlation, flow id, Python ids) and ProfilerStep numbers are
    offset, so steps, flows and kernel->launch correlations stay consistent within each copy."""
    import msgspec

    with gzip.open(src, "rb") as f:
        doc = msgspec.json.decode(f.read())
    events = doc.pop("traceEvents")
    ts = [e["ts"] for e in events if isinstance(e.get("ts"), (int, float))]
    span = int(max(ts) - min(ts)) + 1000          # µs, plus 1 ms between copies
    max_id = 0
    steps = []
    for e in events:
        a = e.get("args")
        if isinstance(a, dict):
            for k in _ID_ARGS:
                if isinstance(a.get(k), int):
                    max_id = max(max_id, a[k])
        if isinstance(e.get("id"), int):
            max_id = max(max_id, e["id"])
        if str(e.get("name", "")).startswith("ProfilerStep#"):
            steps.append(int(e["name"].split("#")[1]))
    id_step = max_id + 1
    step_step = (max(steps) - min(steps) + 1) if steps else 0
    enc = msgspec.json.Encoder()
    tmp = dst.with_suffix(".partial")
    n = 0
    with gzip.open(tmp, "wb", compresslevel=3) as out:
        head = enc.encode(doc)
        out.write(head[:-1] + (b',' if len(head) > 2 else b'') + b'"traceEvents":[')
        for k in range(copies):
            batch = []
            for e in events:
                c = dict(e)
                if isinstance(c.get("ts"), (int, float)) and c.get("ph") != "M":
                    c["ts"] = c["ts"] + k * span
                a = c.get("args")
                if isinstance(a, dict) and k:
                    a = dict(a)
                    for key in _ID_ARGS:
                        if isinstance(a.get(key), int) and a[key] >= 0:
                            a[key] += k * id_step
                    c["args"] = a
                if k and isinstance(c.get("id"), int):
                    c["id"] += k * id_step
                name = c.get("name")
                if k and isinstance(name, str) and name.startswith("ProfilerStep#"):
                    c["name"] = f"ProfilerStep#{int(name.split('#')[1]) + k * step_step}"
                if k and c.get("ph") == "M":
                    continue                      # process/thread names once
                batch.append(c)
            body = enc.encode(batch)[1:-1]
            out.write((b"," if k else b"") + body)
            n += len(batch)
        out.write(b"]}")
    tmp.rename(dst)
    return {"events": n, "copies": copies}


# ---- HTA -----------------------------------------------------------------------------------------------

def hta_python() -> Path:
    py = HTA_VENV / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import hta"], capture_output=True).returncode == 0:
        return py
    print(f"creating {HTA_VENV} with HolisticTraceAnalysis=={HTA_VERSION} (one-time) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(HTA_VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    if subprocess.run(pip + [f"HolisticTraceAnalysis=={HTA_VERSION}"]).returncode != 0:
        print(f"HolisticTraceAnalysis=={HTA_VERSION} not installable; taking the newest", flush=True)
        subprocess.run(pip + ["HolisticTraceAnalysis"], check=True)
    return py


def hta_version(py: Path) -> str:
    r = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version('HolisticTraceAnalysis'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


def trace_dir_for(trace: Path) -> Path:
    """HTA reads a folder of rank files: give each trace its own folder (a symlink to the file)."""
    d = BENCH / "hta-dirs" / trace.name.split(".")[0]
    d.mkdir(parents=True, exist_ok=True)
    link = d / trace.name
    if not link.exists():
        link.symlink_to(trace.resolve())
    return d


# ---- main ----------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the fastest is reported")
    ap.add_argument("--skip-hta", action="store_true")
    ap.add_argument("--skip-big", action="store_true", help="only the 216k-event trace")
    ap.add_argument("--python", default=sys.executable, help="interpreter with npu-advise installed")
    args = ap.parse_args(argv)

    BENCH.mkdir(exist_ok=True)
    traces = [("216k", TRACE)]
    if not args.skip_big:
        big = BENCH / f"v100_rank1_x{args.copies}.json.gz"
        if not big.exists():
            print(f"writing {big} ({args.copies} copies) ...", flush=True)
            info = make_replicated(TRACE, big, args.copies)
            print(f"  {info['events']:,} events, {big.stat().st_size / 1e6:.0f} MB gz", flush=True)
        traces.append((f"x{args.copies}", big))

    hta_py = None
    if not args.skip_hta:
        hta_py = hta_python()

    results = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                           "load_average_at_start": os.getloadavg()}, "rows": []}
    rows = results["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in traces:
            print(f"== {label}: {path.name}", flush=True)
            load = best_of([args.python, "-c", _LOAD_ONLY, path], args.repeat)
            rows.append({"trace": label, "tool": "npu-advise", "what": "load (in-process)", "s": load["load_s"],
                         "peak_mb": load["peak_mb"], "detail": {k: load[k] for k in ("ops", "runtime", "kernels",
                                                                                     "steps", "import_s",
                                                                                     "worker_peak_mb")}})
            worker = (f" (decoding worker process: peak {load['worker_peak_mb']:.0f} MB, shared pages included)"
                      if load["worker_peak_mb"] else "")
            print(f"  npu-advise load {load['load_s']:.2f} s, peak {load['peak_mb']:.0f} MB{worker}", flush=True)
            try:
                e2e = best_of([args.python, "-m", "npu_advise.cli", "analyze", path, "--out", Path(tmp) / label],
                              args.repeat)
                rows.append({"trace": label, "tool": "npu-advise", "what": "analyze end to end (process)",
                             "s": e2e["wall_s"], "peak_mb": e2e["peak_mb"], "detail": {"runs": e2e["runs_wall_s"]}})
                print(f"  npu-advise analyze {e2e['wall_s']:.2f} s, peak {e2e['peak_mb']:.0f} MB", flush=True)
            except RuntimeError as exc:
                print(f"  npu-advise analyze FAILED: {exc}", flush=True)
                rows.append({"trace": label, "tool": "npu-advise", "what": "analyze end to end (process)",
                             "s": None, "peak_mb": None, "detail": {"error": str(exc)[-500:]}})
            if hta_py:
                repeat = args.repeat if label == "216k" else 1
                h = best_of([hta_py, "-c", _HTA, trace_dir_for(path)], repeat, timeout=1800)
                rows.append({"trace": label, "tool": f"HTA {hta_version(hta_py)}", "what": "load (in-process)",
                             "s": h["load_s"], "peak_mb": h["peak_mb"], "detail": {"import_s": h["import_s"]}})
                rows.append({"trace": label, "tool": f"HTA {hta_version(hta_py)}",
                             "what": "load + temporal breakdown end to end (process)", "s": h["wall_s"],
                             "peak_mb": h["peak_mb"], "detail": {"temporal_s": h["temporal_s"]}})
                print(f"  HTA load {h['load_s']:.2f} s; end to end {h['wall_s']:.2f} s, peak {h['peak_mb']:.0f} MB",
                      flush=True)

    results["machine"]["load_average_at_end"] = os.getloadavg()
    _print_table(rows)
    print(f"\nload average (1/5/15 min) at start {results['machine']['load_average_at_start']}, "
          f"at end {results['machine']['load_average_at_end']} on {os.cpu_count()} CPUs: other work on the "
          f"machine inflates wall times")
    (BENCH / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwritten: {BENCH / 'results.json'}")


def _print_table(rows: list):
    print(f"\n{'trace':<6} {'tool':<12} {'what':<48} {'seconds':>8} {'peak MB':>8}")
    for r in rows:
        s = f"{r['s']:.2f}" if r["s"] is not None else "failed"
        mb = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        print(f"{r['trace']:<6} {r['tool']:<12} {r['what']:<48} {s:>8} {mb:>8}")
    print("\nratios (npu-advise / HTA; below 1 = npu-advise better):")
    for trace in dict.fromkeys(r["trace"] for r in rows):
        ours = {r["what"]: r for r in rows if r["trace"] == trace and r["tool"] == "npu-advise"}
        theirs = {r["what"]: r for r in rows if r["trace"] == trace and r["tool"].startswith("HTA")}
        pairs = [("load", ours.get("load (in-process)"), theirs.get("load (in-process)")),
                 ("end to end", ours.get("analyze end to end (process)"),
                  theirs.get("load + temporal breakdown end to end (process)"))]
        for what, a, b in pairs:
            if a and b and a["s"] and b["s"]:
                print(f"  {trace:<6} {what:<11} time {a['s'] / b['s']:.2f}  ({a['s']:.2f} s vs {b['s']:.2f} s)   "
                      f"peak RSS {a['peak_mb'] / b['peak_mb']:.2f}  ({a['peak_mb']:.0f} vs {b['peak_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
