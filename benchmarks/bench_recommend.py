"""Benchmark: is the recommender fast enough for real projects?

    python benchmarks/bench_recommend.py [--repeat 5] [--skip-profile]

Two measurements, in one session on the same machine (issue 12's targets):

1. `npu-advise analyze` of the bundled example's profile (a 327-line training script whose findings go
   through every codemod) against `analyze` of the 216k-event GPU trace
   `../shared/data/kineto/hta_df_index_resolver_v100_rank1.json.gz` (no source to rewrite). Target: the
   example no slower. The example's profile is made once under `.bench/example/` with `npu-advise profile`.
   Besides wall time, the CPU seconds of each stage (load, analyzers, recommend) of one in-process run,
   so a loaded machine does not hide where the time goes.
2. `npu-advise check` of the real BEVFormer source (`../shared/data/src/bevformer`, 150 files): cold
   (`--no-cache`, text and json with the fixes' diffs) and warm (cache filled). Target: <= 10 s on 2 cores.

Every number is measured here, best of --repeat runs (wall seconds, interpreter start included). Results are
printed and written to `.bench/recommend.json`.
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


def wall(cmd: list, repeat: int, ok=(0,)) -> dict:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        runs.append(time.perf_counter() - t)
        if p.returncode not in ok:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-1500:]}")
    return {"best_s": round(min(runs), 3), "runs_s": [round(r, 3) for r in runs]}


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
        subprocess.run(npu_advise("profile", "--out", out, EXAMPLE, "--epochs", "1"), check=True,
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
        results["analyze_example"] = wall(npu_advise("analyze", "--out", Path(tmp) / "ex", example), args.repeat)
        results["analyze_gpu_trace"] = wall(npu_advise("analyze", "--out", Path(tmp) / "gpu", GPU_TRACE), args.repeat)
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
    ratio = results["analyze_example"]["best_s"] / results["analyze_gpu_trace"]["best_s"]
    results["example_over_gpu_trace"] = round(ratio, 2)
    (BENCH / "recommend.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
