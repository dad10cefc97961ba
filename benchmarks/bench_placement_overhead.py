"""Step time with and without placement tracking, from the recorded traces themselves.

    python benchmarks/bench_placement_overhead.py [--repeat 3] SCRIPT [ARGS]...

Runs `npu-advise profile` on SCRIPT alternately with and without `--no-placement` (REPEAT times each),
reads the mean ProfilerStep duration of each run's trace, and prints the median per mode and the
overhead of tracking (the source-line markers are recorded in both modes, so the difference is the
tracker's own cost).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def step_ms(script: Path, args: list, tracking: bool, folder: Path) -> float:
    sys.path.insert(0, str(REPO))
    from npu_advise.load import load_kineto_file
    out = Path(tempfile.mkdtemp(dir=folder))
    cmd = [sys.executable, "-m", "npu_advise.cli", "profile", "--out", str(out / "o")]
    if not tracking:
        cmd.append("--no-placement")
    subprocess.run(cmd + [str(script), *args], check=True, capture_output=True, env={"OMP_NUM_THREADS": "1",
                   **__import__("os").environ})
    trace = load_kineto_file(next((out / "o" / "trace").glob("*.json.gz")))
    return float(trace.steps["dur"].mean()) / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("script", type=Path)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    a = parser.parse_args(argv)
    runs = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):
            for tracking in (False, True):
                runs[tracking].append(step_ms(a.script, a.args, tracking, Path(tmp)))
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"{a.script.name}: step {off:.1f} ms without tracking, {on:.1f} ms with "
          f"(median of {a.repeat} runs each; overhead {100 * (on / off - 1):+.1f} %)")
    print("  without:", ", ".join(f"{v:.1f}" for v in runs[False]), " with:", ", ".join(f"{v:.1f}" for v in runs[True]))


if __name__ == "__main__":
    main()
