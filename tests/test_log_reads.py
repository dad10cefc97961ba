"""The `log_reads` rewrite (per-step log line reading a device value -> buffered, one read per LOG_INTERVAL
steps): same printed text for every dtype/shape/step count, idempotent, refusals; and the whole-run check
that verifies it on a real run (and rejects a rewrite that changes the training)."""
from __future__ import annotations

import contextlib
import io
import os
import shutil

import pytest

from _codemod_helpers import line_of
from conftest import SCRIPTS, read_json, run_cli

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import log_reads  # noqa: E402

LOOP = '''import torch


def train(losses, lr):
    history = []
    for step, value in enumerate(losses):
        loss = value * 1
        tic = 0.5 * step
        took = float(tic) * 2 + 0.25
        {line}
    return history
'''

LINES = {
    "item": 'print(f"step {step} loss {loss.item():.6f} ({tic:.2f}s)")',
    "format": 'print(f"it {step} loss {loss:.4e} {{braces}}")',
    "percent": 'print("iter %d loss %.6f %%" % (step, loss))',
    "float": 'print(f"[{step}] loss={float(loss):+.3g}")',
    "chain": 'print(f"step {step}: loss {loss.detach().cpu().item():.6f}")',
    # a number-formatted field of a host number (`float()` arithmetic) is not a read: the tensor field is
    "host_field": 'print(f"step {step} loss {loss:.6f} took {took:.3f}s")',
    "host_percent": 'print("iter %d loss %.6f took %.2fs" % (step, loss, took))',
    # no spec: the read value printed as it is, rounded, or as a float (an integer tensor prints `3.0`)
    "bare": 'print(f"step {step} loss {loss.item()}")',
    "round": 'print(f"step {step} loss {round(loss.item(), 4)}")',
    "round_float": 'print(f"step {step} loss {round(float(loss.detach()), 3)}")',
    "float_bare": 'print(f"[{step}] {float(loss)}")',
    "detach_percent": 'print("iter %d loss %.5e" % (step, loss.detach()))',
    # several arguments: printed as str() of each, joined by spaces
    "args": 'print("iter", step, "loss", round(float(loss.detach()), 5), "{x}", tic)',
}


def _rewrite(line: str):
    src = LOOP.replace("{line}", line)
    found = log_reads.candidates(src, line_of(src, "print("))
    assert len(found) == 1, line
    return src, found[0]


def _printed(source: str, losses) -> str:
    ns = {}
    exec(compile(source, "<log>", "exec"), ns)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ns["train"](losses, 0.1)
    return buf.getvalue()


@pytest.mark.parametrize("kind", sorted(LINES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_printed_text_is_the_same_for_every_step_count(kind, dtype):
    src, r = _rewrite(LINES[kind])
    g = torch.Generator().manual_seed(3)
    for steps in (0, 1, log_reads.LOG_INTERVAL - 1, log_reads.LOG_INTERVAL, 2 * log_reads.LOG_INTERVAL + 3):
        for shape in ((), (1,)):
            if kind in ("format", "host_field") and shape:
                continue                    # `{t:.4e}` formats only 0-d tensors, in the original too
            losses = [(torch.randn(shape, generator=g) * 10.0 ** (k % 7 - 3)).to(dtype) for k in range(steps)]
            assert _printed(r.new_source, losses) == _printed(src, losses), (kind, dtype, steps, shape)


@pytest.mark.parametrize("kind", ["bare", "float_bare", "round", "args"])
def test_an_integer_count_prints_as_the_line_printed_it(kind):
    # `float(count)` prints `3.0`, `count.item()` prints `3`: the buffered value keeps the line's conversion
    src, r = _rewrite(LINES[kind])
    counts = [torch.tensor(k * 7 - 5) for k in range(log_reads.LOG_INTERVAL + 2)]
    assert _printed(r.new_source, counts) == _printed(src, counts)


def test_is_idempotent_and_says_how_printing_changes():
    src, r = _rewrite(LINES["item"])
    assert log_reads.candidates(r.new_source, line_of(r.new_source, ".append((")) == []
    assert f"every {log_reads.LOG_INTERVAL} steps" in r.description
    assert r.needs_verification and not r.auto_applicable
    assert any("training is unchanged" in n for n in r.needs_verification)


@pytest.mark.parametrize("body", [
    'print(f"step {step} loss {loss.item():.6f}")\n        print("other")',            # another print
    'print(f"step {step} loss {loss.item():.6f}")\n        loss += 1',                   # changed in place
    'print(f"step {step} loss {loss.item():.6f}")\n        if step > 3:\n            return history',
    'print(f"step {step} loss {loss.item():.6f}", flush=True)',                        # keyword argument
    'print(f"step {step} loss {loss}")',                                                 # a tensor's repr
    'print("loss", loss)',
    'print(f"loss {loss.item():.6f} {value.item():.6f}")',                               # two reads
    'print(f"loss {loss.item():.6f}", {"v": round(value.item(), 3)})',                  # a read left on the line
    'print(f"step {step} loss {round(loss.item(), 4)!r}")',
    'print(f"step {step} loss {loss.item()!r}")',
    'print("loss %s" % loss)',                                                           # tensor repr
    'print(f"step {step} value {value.item():.6f}")',                                   # not assigned in the loop
    'print(f"step {step} loss {loss:.6f} {tic:.2f}s")',                # two fields that may both be tensors
])
def test_refuses_what_it_cannot_keep_equal(body):
    src = LOOP.replace("{line}", body)
    assert log_reads.candidates(src, line_of(src, "print(")) == []


def test_refuses_an_alias_of_a_long_lived_tensor():
    src = LOOP.replace("loss = value * 1", "loss = value").replace("{line}", 'print(f"{loss.item():.3f}")')
    assert log_reads.candidates(src, line_of(src, "print(")) == []


@pytest.fixture(scope="module")
def log_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("log_reads")
    proj = tmp / "proj"
    proj.mkdir()
    shutil.copy(SCRIPTS / "log_train.py", proj / "log_train.py")
    out = tmp / "out"
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH")) if p),
           "NPU_ADVISE_GENERATORS": "whole_run_generators", "OMP_NUM_THREADS": "1"}
    r = run_cli("profile", "--out", out, proj / "log_train.py", env=env, cwd=proj)
    assert r.returncode == 0, r.stderr[-3000:]
    return proj, out


def test_whole_run_check_verifies_the_log_rewrite_and_rejects_a_changed_training(log_run):
    proj, out = log_run
    findings = read_json(out / "findings.json")["findings"]
    log = next(f for f in findings if (f.get("fix") or {}).get("catalog_ref") == "rewrites.log_reads")
    v = log["fix"]["verification"]
    assert v["status"] == "verified" and v["check"] == "whole run" and v["calls"] == 5, v
    assert v["max_abs_diff"]["parameters"] == 0.0
    assert log["fix"]["auto_applicable"] is True
    assert "whole run of 5 optimizer steps" in v["summary"]
    wrong = next(f for f in findings if f.get("subject") == "wrong lr")
    w = wrong["fix"]["verification"]
    assert w["status"] == "rejected" and "the training changed" in w["reason"], w
    assert wrong["fix"]["auto_applicable"] is False
    # applied, the script prints the same lines
    import subprocess
    import sys
    before = subprocess.run([sys.executable, "log_train.py"], cwd=proj, capture_output=True, text=True).stdout
    r = run_cli("apply", out, cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LOG_INTERVAL" in (proj / "log_train.py").read_text()
    after = subprocess.run([sys.executable, "log_train.py"], cwd=proj, capture_output=True, text=True).stdout
    assert after == before and before.count("loss") == 12
