"""Record real torch.profiler traces of small scripts for analyzer tests.

`profile_script(path, func_name, out)` imports a script file, runs `func_name()` once per profiler
iteration under torch.profiler (CPU, record_shapes, with_stack; schedule wait=1, warmup=1, active=2)
and exports the trace from `on_trace_ready` (on torch 2.13, exporting after the context exits writes
no events). Every torch call made from the script file is wrapped in a
`npa.src:FILE:LINE:FUNC` range — the same marker npu-advise's collector writes — so the Kineto
loader yields exact source lines.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

_TORCH_DIR = os.path.dirname(torch.__file__)


class SourceMarkers(TorchFunctionMode):
    """Wrap each torch call whose innermost non-torch caller is in `files` in a marker range."""

    def __init__(self, files):
        super().__init__()
        self.files = {str(Path(f).resolve()) for f in files}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(_TORCH_DIR):
            frame = frame.f_back
        if frame is not None and frame.f_code.co_filename in self.files:
            name = f"npa.src:{frame.f_code.co_filename}:{frame.f_lineno}:{frame.f_code.co_name}"
            with torch._C._profiler._RecordFunctionFast(name):
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def import_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"npa_test_{Path(path).stem}", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profile_script(path: Path, func_name: str, out: Path, iterations: int = 4, markers: bool = True) -> Path:
    """Profile `func_name()` of the script at `path`; returns the exported trace file (2 active steps).
    `markers=False` records a plain torch.profiler trace (python_function frames only, def lines)."""
    path = Path(path).resolve()
    module = import_script(path)
    func = getattr(module, func_name)
    out = Path(out)
    exported = []

    def on_ready(prof):
        prof.export_chrome_trace(str(out))
        exported.append(out)

    schedule = torch.profiler.schedule(wait=1, warmup=1, active=2)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule,
                                on_trace_ready=on_ready, record_shapes=True, with_stack=True) as prof:
        with SourceMarkers([path]) if markers else contextlib.nullcontext():
            for _ in range(iterations):
                func()
                prof.step()
    assert exported, "the profiler exported no trace"
    return out


# A small training step with the seed's anti-patterns, each line tagged `# demo: TAG` for the tests.
DEMO_SCRIPT = '''\
import torch
import torch.nn as nn

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 5))
OPTIMIZER = torch.optim.AdamW(MODEL.parameters(), lr=1e-3)  # demo: adamw
LENGTHS = torch.tensor([3, 5, 7, 2, 8, 1, 4, 6, 9, 10, 2, 3])


def interpolate(start_pt, end_pt, inter_num):
    res = torch.zeros((inter_num, 2), dtype=start_pt.dtype, device=start_pt.device)
    num_len = inter_num + 1  # segment num.
    for i in range(1, num_len):  # demo: interpolate-for
        ratio = i / num_len
        res[i - 1] = (1 - ratio) * start_pt + ratio * end_pt  # demo: interpolate-loop
    return res


def valid_mask(valid_len, n_pt):
    gt_pts_mask = torch.zeros((len(valid_len), n_pt))
    for i, ll in enumerate(valid_len):  # demo: mask-for
        gt_pts_mask[i][:ll] = 1  # demo: valid-len-mask
    return gt_pts_mask


def short_loop(x):
    for k in range(3):  # demo: short-for
        x = x * 2 + 1
    return x


def step():
    out = MODEL(torch.rand(8, 4))
    pts = interpolate(out[0, :2], out[1, :2], 90)
    mask = valid_mask(LENGTHS, 10)
    chol = torch.tril(out[:, :4].view(8, 2, 2)) + torch.eye(2) * 2
    cov = chol @ chol.transpose(-1, -2)
    precision = torch.inverse(cov)  # demo: inverse
    nll = torch.logdet(cov).sum() + precision.sum()  # demo: logdet
    loss = pts.sum() + mask.sum() + nll + short_loop(out).sum()
    OPTIMIZER.zero_grad()
    loss.backward()
    OPTIMIZER.step()
'''


def demo_trace_without_markers():
    """(script path, trace path) of the demo script profiled with plain with_stack (no source markers)."""
    if "plain" not in _DEMO:
        script, _ = demo_trace()
        _DEMO["plain"] = (script, profile_script(script, "step", script.parent / "plain.pt.trace.json", markers=False))
    return _DEMO["plain"]


def demo_line(tag: str, text: str = DEMO_SCRIPT) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if line.rstrip().endswith(f"# demo: {tag}")]
    assert len(hits) == 1, tag
    return hits[0]


_DEMO = {}


def demo_trace():
    """(script path, trace path) of the demo script profiled once per test process."""
    if "paths" not in _DEMO:
        import tempfile
        folder = Path(tempfile.mkdtemp(prefix="npa_demo_"))
        script = folder / "demo_train.py"
        script.write_text(DEMO_SCRIPT, encoding="utf-8")
        _DEMO["paths"] = (script, profile_script(script, "step", folder / "demo.pt.trace.json"))
    return _DEMO["paths"]


def example_findings() -> tuple:
    """(findings.json dict, out folder) of `npu-advise profile examples/bev_train/train.py --epochs 1`,
    run once per test process through the real CLI."""
    if "example" not in _DEMO:
        import json
        import subprocess
        import tempfile
        repo = Path(__file__).resolve().parents[1]
        out = Path(tempfile.mkdtemp(prefix="npa_example_")) / "out"
        proc = subprocess.run([sys.executable, "-m", "npu_advise.cli", "profile", "--out", str(out),
                               str(repo / "examples" / "bev_train" / "train.py"), "--epochs", "1"],
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _DEMO["example"] = (json.loads((out / "findings.json").read_text(encoding="utf-8")), out)
    return _DEMO["example"]


def example_marker_line(tag: str) -> int:
    path = Path(__file__).resolve().parents[1] / "examples" / "bev_train" / "train.py"
    hits = [i + 1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())
            if line.rstrip().endswith(f"# npa-example: {tag}")]
    assert len(hits) == 1, tag
    return hits[0]
