"""Profile a tiny CPU training script with torch.profiler for the analyzer tests (real traces, no fixtures).

The script is written to a temporary folder and imported; `train_step()` runs once per profiler step
under `torch.profiler.profile(record_shapes, with_stack, schedule wait=1, warmup=1, active=2)`, and the
trace is exported from `on_trace_ready` (on torch 2.13 a trace exported after the context exits is
empty).
"""
from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

TRAIN_SCRIPT = textwrap.dedent('''
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 16)
    y = torch.randn(64, 1)


    def read_loss(loss):
        return loss.item()


    def keep_positive(t):
        return t[t > 0]


    def smooth(t):
        for _ in range(100):
            t = t * 0.99 + 0.01
        return t


    def train_step():
        out = smooth(model(x))
        loss = torch.nn.functional.mse_loss(out, y) + keep_positive(out).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        total = 0.0
        for _ in range(3):
            total += read_loss(loss)
        return total
''')


def def_line(source: str, func: str) -> int:
    lines = source.splitlines()
    return next(i + 1 for i, l in enumerate(lines) if l.startswith(f"def {func}("))


def profile_tiny_training(tmp: Path) -> tuple:
    """(trace path, script path) of 2 active profiled steps of TRAIN_SCRIPT."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    script = Path(tmp) / "tiny_train.py"
    script.write_text(TRAIN_SCRIPT, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("npa_tiny_train", str(script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = Path(tmp) / "tiny_train.pt.trace.json"

    def on_ready(prof):
        prof.export_chrome_trace(str(out))

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True,
                 schedule=schedule(wait=1, warmup=1, active=2), on_trace_ready=on_ready) as prof:
        for _ in range(4):
            module.train_step()
            prof.step()
    assert out.is_file() and out.stat().st_size > 1000, "torch.profiler exported no trace"
    del torch
    return out, script
