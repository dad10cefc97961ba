"""`device_checks` on a raising branch and `device_math` (a clamped read kept on the device): numeric equivalence
on several dtypes, empty and one-element inputs; idempotence; refusals."""
from __future__ import annotations

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import checks, device_math  # noqa: E402

RAISING = '''import torch


def step(loss):
    if not torch.isfinite(loss):  # keep
        raise RuntimeError("loss diverged")
    return loss * 2
'''

COUNT = '''import torch
import torch.nn.functional as F


def loss_of(pred, target, pos):
    num_pos = max(pos.sum().item(), 1.0)
    return F.l1_loss(pred, target, reduction="sum") / num_pos + pred.sum() * 0 / num_pos
'''


def test_raising_branch_becomes_an_async_assert():
    (r,) = checks.candidates(RAISING, line_of(RAISING, "if not"))
    assert r.auto_applicable and "torch._assert_async(torch.isfinite(loss), \"loss diverged\")  # keep" in r.new_source
    assert checks.candidates(r.new_source, line_of(r.new_source, "_assert_async")) == []
    old, new = load_function(RAISING, "step"), load_function(r.new_source, "step")
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for x in (torch.tensor(1.5, dtype=dtype), torch.ones(1, dtype=dtype)):
            assert torch.equal(old(x), new(x))
        for bad in (float("nan"), float("inf")):
            with pytest.raises(RuntimeError, match="loss diverged"):
                old(torch.tensor(bad, dtype=dtype))
            with pytest.raises(RuntimeError, match="loss diverged"):
                new(torch.tensor(bad, dtype=dtype))


@pytest.mark.parametrize("branch", [
    '    if not torch.isfinite(loss):\n        print("diverged")\n        raise RuntimeError("x")\n',
    '    if not torch.isfinite(loss):\n        raise RuntimeError(f"diverged {loss}")\n',
    '    if not torch.isfinite(loss):\n        raise RuntimeError("x")\n    else:\n        pass\n',
    '    if not flag:\n        raise RuntimeError("x")\n',
])
def test_raising_branch_refusals(branch):
    src = "import torch\n\n\ndef step(loss, flag):\n" + branch + "    return loss\n"
    assert checks.candidates(src, line_of(src, "if not")) == []


def test_clamped_count_stays_on_the_device_with_equal_values_and_gradients():
    (r,) = device_math.candidates(COUNT, line_of(COUNT, "num_pos ="))
    assert r.auto_applicable and "num_pos = pos.sum().clamp(min=1.0)" in r.new_source
    assert device_math.candidates(r.new_source, line_of(r.new_source, "num_pos =")) == []
    old, new = load_function(COUNT, "loss_of"), load_function(r.new_source, "loss_of")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        for n in (0, 1, 7, 300):
            pred = torch.randn(n, 3, generator=g, dtype=dtype, requires_grad=True)
            target = torch.randn(n, 3, generator=g, dtype=dtype)
            for pos in (torch.zeros(n, 3, dtype=torch.bool), torch.rand(n, 3, generator=g) > 0.5):
                a, b = old(pred, target, pos), new(pred, target, pos)
                assert a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-6, atol=0)
                ga, = torch.autograd.grad(a, pred)
                gb, = torch.autograd.grad(b, pred)
                assert torch.allclose(ga, gb, rtol=1e-6, atol=0)


def test_clamped_count_with_an_operand_not_proven_a_tensor_needs_the_run():
    src = COUNT.replace("    return", "    extra = weight_of(pred) / num_pos\n    return", 1)
    (r,) = device_math.candidates(src, line_of(src, "num_pos = max"))
    assert not r.auto_applicable and r.needs_verification == [
        "`weight_of(pred)` is a tensor (the other operand of `num_pos`)"]


@pytest.mark.parametrize("use", ['    print(f"{num_pos}")\n', '    if num_pos > 3:\n        pass\n',
                                 '    num_pos = 2\n', '    return num_pos / 2\n'])
def test_clamped_count_refusals(use):
    src = COUNT.replace("    return", use + "    return", 1)
    assert device_math.candidates(src, line_of(src, "num_pos = max")) == []
