"""Benchmark: what the verification stage's extra run costs, against the profiled run it follows.

    python benchmarks/bench_verify.py [--repeat 3] [--script examples/bev_train/train.py] [-- SCRIPT ARGS]

Per repeat, in fresh processes: `npu-advise profile --no-verify` of the script (the profiled run's wall
time is the child's, from collection.json: interpreter start, imports, wait + warmup + active steps under
the profiler, trace export), then `npu-advise verify` of that report (the stage's extra run, from
collection.json's "verification"), and the same re-run with no rewrite installed (the script's own cost
for those steps without profiler). Medians are printed and written to `.bench/verify.json`.
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


def _cli(*args) -> None:
    r = subprocess.run([sys.executable, "-m", "npu_advise.cli", *map(str, args)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
    if r.returncode != 0:
        raise SystemExit(f"npu-advise {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")


def _bare_rerun(collection: dict) -> float:
    """Wall seconds of the verification child with no target: the script re-run for the same steps."""
    schedule = collection["schedule"]
    steps = schedule["wait"] + schedule["warmup"] + schedule["active"]
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"results": str(Path(tmp) / "r.json"), "max_calls": 1, "max_steps": steps,
                                    "call_timeout_s": 30, "targets": []}))
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "npu_advise.verify.child", str(spec), "--", collection["script"],
                        *collection["args"]], cwd=collection["cwd"], capture_output=True, check=True)
        return time.perf_counter() - t


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
            _cli("profile", "--no-verify", "--out", out, a.script, *a.script_args)
            _cli("verify", out)
            c = json.loads((out / "collection.json").read_text())
            v = c["verification"]
            rows.append({"profiled_run_s": c["wall_seconds"], "verification_run_s": v["wall_seconds"],
                         "bare_rerun_s": _bare_rerun(c), "steps": v["steps"], "runs": v["runs"],
                         "verified": v["verified"], "rejected": v["rejected"], "not_verifiable": v["not_verifiable"]})
            print(f"repeat {k + 1}: {rows[-1]}", flush=True)
    med = {key: statistics.median(r[key] for r in rows) for key in ("profiled_run_s", "verification_run_s", "bare_rerun_s")}
    med["ratio_verification_to_profiled"] = med["verification_run_s"] / med["profiled_run_s"]
    print(json.dumps(med, indent=2))
    BENCH.mkdir(exist_ok=True)
    (BENCH / "verify.json").write_text(json.dumps({"rows": rows, "median": med}, indent=2))


if __name__ == "__main__":
    main()
