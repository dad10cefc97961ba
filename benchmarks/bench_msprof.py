"""Time `npu-advise analyze SAMPLE` against `msprof-analyze advisor all -d SAMPLE` on the same torch_npu
folder (subprocess wall time, median of several repetitions) and print the ratio (goal: <= 1/3).

msprof-analyze (PyPI) is installed into its own venv, .bench/msprof-venv, so it never touches the
project's environment. If it cannot be installed (offline machine, no wheel for this Python), the
script says so and times npu-advise alone.

Usage: python benchmarks/bench_msprof.py [SAMPLE] [--reps N]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = ROOT.parent / "shared" / "data" / "npu" / "alexnet_2rank_text" / "level1"
VENV = ROOT / ".bench" / "msprof-venv"


def ensure_msprof() -> Path | None:
    exe = VENV / "bin" / "msprof-analyze"
    if exe.exists():
        return exe
    VENV.parent.mkdir(parents=True, exist_ok=True)
    if not (VENV / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    r = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "msprof-analyze"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not exe.exists():
        print("msprof-analyze could not be installed: " + (r.stderr.strip().splitlines() or ["no output"])[-1])
        return None
    return exe


def wall(cmd: list, reps: int, cwd=None) -> tuple:
    times, last = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        last = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("sample", nargs="?", default=str(DEFAULT_SAMPLE))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    sample = Path(args.sample).resolve()
    npu_advise = shutil.which("npu-advise") or str(Path(sys.executable).parent / "npu-advise")
    with tempfile.TemporaryDirectory() as out:
        ours, ours_all, r = wall([npu_advise, "analyze", str(sample), "--out", out], args.reps)
    print(f"sample: {sample}")
    print(f"npu-advise analyze: median {ours:.3f} s over {args.reps} runs "
          f"({', '.join(f'{t:.3f}' for t in ours_all)}); exit {r.returncode}")
    if r.returncode != 0:
        print("  npu-advise failed: " + (r.stderr.strip().splitlines() or [""])[-1])
    exe = ensure_msprof()
    if exe is None:
        print("ratio: not measured (msprof-analyze unavailable)")
        return 0
    # msprof-analyze writes its report into the sample's parent: run it on a scratch copy (data is read-only).
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / sample.name
        shutil.copytree(sample, copy)
        for p in copy.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        theirs, theirs_all, r2 = wall([str(exe), "advisor", "all", "-d", str(copy)], args.reps, cwd=tmp)
    print(f"msprof-analyze advisor all: median {theirs:.3f} s over {args.reps} runs "
          f"({', '.join(f'{t:.3f}' for t in theirs_all)}); exit {r2.returncode}")
    if r2.returncode != 0:
        print("  msprof-analyze failed: " + (r2.stderr.strip().splitlines() or [""])[-1])
    print(f"ratio npu-advise / msprof-analyze: {ours / theirs:.3f} (goal <= 0.333)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
