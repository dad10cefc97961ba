"""`masked_assign`: `X[m] = E(Y[m], ...)` -> `X.copy_(torch.where(m, E(Y, ...), X))`: the same tensor written with
the same values (and gradients) for several dtypes and shapes, empty / all-true / one-element masks,
non-contiguous operands; idempotent; refusals."""
from __future__ import annotations

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import masked_assign  # noqa: E402

ASSIGN = '''import torch


def assign(assigned, argmax, score, thr):
    pos = score >= thr
    assigned[pos] = argmax[pos] * 2 + 1 + (score[pos] > 0.9)
    return assigned
'''

GRAD = '''import torch


def blend(out, a, b, keep):
    out = out * 1
    out[keep] = -a[keep] * 0.5 + b[keep].float()
    return out
'''


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float32, torch.float16])
def test_same_tensor_same_values(dtype):
    (r,) = masked_assign.candidates(ASSIGN, line_of(ASSIGN, "assigned[pos] ="))
    assert "assigned.copy_(torch.where(pos, argmax * 2 + 1 + (score > 0.9), assigned))" in r.new_source
    assert masked_assign.candidates(r.new_source, line_of(r.new_source, "copy_")) == []      # idempotent
    old, new = load_function(ASSIGN, "assign"), load_function(r.new_source, "assign")
    g = torch.Generator().manual_seed(5)
    for shape in ((0,), (1,), (9,), (3, 4)):
        for thr in (-10.0, 0.2, 10.0):                     # all-true, some, empty masks
            score = torch.rand(shape, generator=g)
            argmax = torch.randint(0, 7, shape, generator=g).to(dtype)
            base = torch.full(shape, -1).to(dtype)
            a, b = base.clone(), base.clone()
            ra, rb = old(a, argmax, score, thr), new(b, argmax, score, thr)
            assert ra is a and rb is b                     # written in place, same tensor returned
            assert ra.dtype == rb.dtype and torch.equal(ra, rb), (shape, thr)
    # non-contiguous target and operands
    score = torch.rand(5, 4, generator=g).t()
    argmax = torch.randint(0, 7, (5, 4), generator=g).to(dtype).t()
    a = torch.full((5, 4), -1).to(dtype).t()
    b = a.clone().t().contiguous().t()
    assert not a.is_contiguous() and not b.is_contiguous()
    assert torch.equal(old(a, argmax, score, 0.5), new(b, argmax, score, 0.5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_gradients(dtype):
    (r,) = masked_assign.candidates(GRAD, line_of(GRAD, "out[keep] ="))
    old, new = load_function(GRAD, "blend"), load_function(r.new_source, "blend")
    g = torch.Generator().manual_seed(6)
    for shape in ((1,), (6,), (2, 3)):
        for p in (0.0, 0.5, 1.0):
            keep = torch.rand(shape, generator=g) < p
            ins = [torch.randn(shape, generator=g).to(dtype) for _ in range(2)]
            b = torch.randint(0, 3, shape, generator=g)
            la = [t.clone().requires_grad_() for t in ins]
            lb = [t.clone().requires_grad_() for t in ins]
            ya, yb = old(la[0], la[1], b, keep), new(lb[0], lb[1], b, keep)
            assert torch.equal(ya, yb)
            w = torch.randn(shape, generator=g).to(dtype)
            ga = torch.autograd.grad((ya * w).sum(), la)
            gb = torch.autograd.grad((yb * w).sum(), lb)
            assert all(torch.allclose(x, y) for x, y in zip(ga, gb))


@pytest.mark.parametrize("line", [
    "x[m] = 0",                          # a masked fill: no read, no sync to save
    "x[m] = y[m] / 2",                   # division: could raise / differ where the mask is off
    "x[m] = f(y[m])",                    # a call
    "x[m] = y[k] + 1",                   # another mask
    "x[m, 0] = y[m]",                    # a further index
    "x[m] = y[m][0]",                    # not elementwise
    "x[m] = y",                          # nothing read through the mask
    "x[m] = y[m] if c else z[m]",
])
def test_refusals(line):
    src = f"import torch\n\n\ndef f(x, y, z, m, k, c):\n    {line}\n    return x\n"
    assert masked_assign.candidates(src, 5) == []
