"""Benchmark: what the verification stage's extra run costs, against the profiled run it follows.

    python benchmarks/bench_verify.py [--repeat 3] [--script examples/bev_train/train.py] [-- SCRIPT ARGS]

Per repeat, in fresh processes: `npu-advise profile --no-verify` of the script (the profiled run's wall
time is the child's, from collection.json: interpreter start, imports, wait + warmup + active steps under
the profiler, trace export), then `npu-advise verify` of that report (the stage's extra run, from
findings.json's collection.verification), and the same re-run with no rewrite installed (the script's own cost
for those steps without profiler). Wall seconds swing with the machine's load; CPU seconds (user + sys of
the processes, each command's minus one `analyze` of the same trace) much less. Medians are printed and written to `.bench/verify.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / ".bench"


def _cpu() -> float:
    import resource
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def _cli(*args) -> float:
    """CPU seconds (user + sys) of the command and every process it waited for."""
    before = _cpu()
    r = subprocess.run([sys.executable, "-m", "npu_advise.cli", *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    if r.returncode != 0:
        raise SystemExit(f"npu-advise {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return _cpu() - before


def _bare_rerun(collection: dict) -> float:
    """Wall seconds of the verification child with no target: the script re-run for the same steps."""
    schedule = collection["schedule"]
    steps = schedule["wait"] + schedule["warmup"] + schedule["active"]
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"results": str(Path(tmp) / "r.json"), "max_calls": 1, "max_steps": steps,
                                    "call_timeout_s": 30, "targets": []}))
        t, cpu = time.perf_counter(), _cpu()
        subprocess.run([sys.executable, "-m", "npu_advise.verify.child", str(spec), "--", collection["script"],
                        *collection["args"]], cwd=collection["cwd"], capture_output=True, check=True)
        return time.perf_counter() - t, _cpu() - cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--script", default=str(REPO / "examples" / "bev_train" / "train.py"))
    ap.add_argument("script_args", nargs="*", default=["--epochs", "1"])
    a = ap.parse_args()
    rows = []
    for k in range(a.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            profile_cpu = _cli("profile", "--no-verify", "--out", out, a.script, *a.script_args)
            verify_cpu = _cli("verify", out)
            analyze_cpu = _cli("analyze", out, "--out", Path(tmp) / "again")
            c = json.loads((out / "collection.json").read_text())
            v = json.loads((out / "findings.json").read_text())["collection"]["verification"]
            bare_s, bare_cpu = _bare_rerun(c)
            # CPU seconds of the runs alone: each command's total minus one analysis of the same trace
            rows.append({"profiled_run_s": c["wall_seconds"], "verification_run_s": v["wall_seconds"],
                         "bare_rerun_s": bare_s, "profiled_run_cpu_s": profile_cpu - analyze_cpu,
                         "verification_run_cpu_s": verify_cpu - analyze_cpu, "bare_rerun_cpu_s": bare_cpu,
                         "steps": v["steps"], "runs": v["runs"],
                         "verified": v["verified"], "rejected": v["rejected"], "not_verifiable": v["not_verifiable"]})
            print(f"repeat {k + 1}: {rows[-1]}", flush=True)
    keys = ("profiled_run_s", "verification_run_s", "bare_rerun_s", "profiled_run_cpu_s", "verification_run_cpu_s",
            "bare_rerun_cpu_s")
    med = {key: round(statistics.median(r[key] for r in rows), 3) for key in keys}
    med["ratio_wall"] = round(med["verification_run_s"] / med["profiled_run_s"], 3)
    med["ratio_cpu"] = round(med["verification_run_cpu_s"] / med["profiled_run_cpu_s"], 3)
    print(json.dumps(med, indent=2))
    BENCH.mkdir(exist_ok=True)
    (BENCH / "verify.json").write_text(json.dumps({"rows": rows, "median": med}, indent=2))


if __name__ == "__main__":
    main()
