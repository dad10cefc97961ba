"""Benchmark: is the recommender fast enough for real projects?

    python benchmarks/bench_recommend.py [--repeat 5] [--skip-profile]

Two measurements, in one session on the same machine (issue 12's targets):

1. `npu-advise analyze` of the bundled example's profile (a 327-line training script whose findings go
   through every codemod) against `analyze` of the 216k-event GPU trace
   `../shared/data/kineto/hta_df_index_resolver_v100_rank1.json.gz` (no source to rewrite), interleaved run
   by run. Target: the example no slower. The example is analyzed cold (NPU_ADVISE_NO_CACHE=1: every file
   parsed, every codemod run) and warm (the recommender's results cached, as after `profile`, which analyzes
   once itself). The example's profile is made once under `.bench/example/` with `npu-advise profile`.
   Besides wall time, the CPU seconds (user + sys of the process and its children) of each run, which a
   loaded machine inflates less, and the CPU seconds of each stage (load, analyzers, recommend) of one
   in-process run.
2. `npu-advise check` of the real BEVFormer source (`../shared/data/src/bevformer`, 150 files): cold
   (`--no-cache`, text and json with the fixes' diffs) and warm (cache filled). Target: <= 10 s on 2 cores.

Every number is measured here: the median of --repeat runs (wall seconds, interpreter start included), with
every run listed. Results are printed and written to `.bench/recommend.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from npu_advise.recommendations.cache import NO_CACHE_ENV

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GPU_TRACE = SHARED / "kineto" / "hta_df_index_resolver_v100_rank1.json.gz"
BEVFORMER = SHARED / "src" / "bevformer"
EXAMPLE = REPO / "examples" / "bev_train" / "train.py"
BENCH = REPO / ".bench"

_STAGES = r"""
import json, sys, time
from pathlib import Path
c = time.process_time
t0 = c()
from npu_advise.analyzers import Context, run_all
from npu_advise.load import load_profile
trace = load_profile(sys.argv[1])[0]
t1 = c()
ctx = Context(project_root=Path(sys.argv[2]) if sys.argv[2] else None)
run_all(trace, ctx)
t2 = c()
from npu_advise.recommendations import recommend
new = recommend(trace, ctx)
t3 = c()
print(json.dumps({"load_cpu_s": t1 - t0, "analyzers_cpu_s": t2 - t1, "recommend_cpu_s": t3 - t2,
                  "findings": len(ctx.findings) + len(new)}))
"""


def npu_advise(*args) -> list:
    return [sys.executable, "-m", "npu_advise.cli", *map(str, args)]


def run_once(cmd: list, ok=(0,), env=None) -> tuple:
    """(wall seconds, CPU seconds of the process and its children) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    elapsed = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr[-1500:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def summary(runs: list) -> dict:
    return {"median_s": round(statistics.median(w for w, _ in runs), 3),
            "median_cpu_s": round(statistics.median(c for _, c in runs), 3),
            "runs_s": [round(w, 3) for w, _ in runs], "runs_cpu_s": [round(c, 3) for _, c in runs]}


def wall(cmd: list, repeat: int, ok=(0,)) -> dict:
    return summary([run_once(cmd, ok) for _ in range(repeat)])


def stages(trace: Path, root: str) -> dict:
    p = subprocess.run([sys.executable, "-c", _STAGES, str(trace), root], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-1500:])
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in json.loads(p.stdout.splitlines()[-1]).items()}


def example_profile(skip: bool) -> Path:
    out = BENCH / "example"
    if not (out / "trace").is_dir():
        if skip:
            raise SystemExit(f"no example profile in {out}; run without --skip-profile once")
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(npu_advise("profile", "--no-verify", "--out", out, EXAMPLE, "--epochs", "1"), check=True,
                       capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-profile", action="store_true", help="reuse .bench/example (fail if missing)")
    args = ap.parse_args()
    BENCH.mkdir(exist_ok=True)
    results = {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())}
    example = example_profile(args.skip_profile)
    with tempfile.TemporaryDirectory() as tmp:
        warm_env = {"XDG_CACHE_HOME": str(Path(tmp) / "xdg")}
        run_once(npu_advise("analyze", "--out", Path(tmp) / "ex", example), env=warm_env)   # fills the cache
        runs = {"cold": [], "warm": [], "gpu": []}
        for _ in range(args.repeat):    # interleaved, so a change in the machine's load hits all three alike
            runs["cold"].append(run_once(npu_advise("analyze", "--out", Path(tmp) / "ex", example),
                                         env={NO_CACHE_ENV: "1"}))
            runs["warm"].append(run_once(npu_advise("analyze", "--out", Path(tmp) / "ex", example), env=warm_env))
            runs["gpu"].append(run_once(npu_advise("analyze", "--out", Path(tmp) / "gpu", GPU_TRACE),
                                        env={NO_CACHE_ENV: "1"}))
        results["analyze_example_cold"] = summary(runs["cold"])
        results["analyze_example_warm"] = summary(runs["warm"])
        results["analyze_gpu_trace"] = summary(runs["gpu"])
        results["example_stages_cpu"] = stages(example / "trace", str(EXAMPLE.parent))
        results["gpu_trace_stages_cpu"] = stages(GPU_TRACE, "")
        if BEVFORMER.is_dir():
            cache = Path(tmp) / "cache"
            os.chdir(BEVFORMER)
            results["check_bevformer_cold_text"] = wall(npu_advise("check", "--no-cache", "."), args.repeat, ok=(0, 1))
            results["check_bevformer_cold_json"] = wall(
                npu_advise("check", "--no-cache", "--format", "json", "-o", Path(tmp) / "c.json", "."), args.repeat,
                ok=(0, 1))
            subprocess.run(npu_advise("check", "--cache-dir", cache, "--format", "json", "-o", Path(tmp) / "c.json", "."),
                           capture_output=True)
            results["check_bevformer_warm_json"] = wall(
                npu_advise("check", "--cache-dir", cache, "--format", "json", "-o", Path(tmp) / "c.json", "."),
                args.repeat, ok=(0, 1))
    gpu = results["analyze_gpu_trace"]
    for kind in ("cold", "warm"):
        ex = results[f"analyze_example_{kind}"]
        results[f"example_{kind}_over_gpu_trace"] = {
            "wall": round(ex["median_s"] / gpu["median_s"], 2), "cpu": round(ex["median_cpu_s"] / gpu["median_cpu_s"], 2)}
    (BENCH / "recommend.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
