"""`index_reads`: a scalar read that only indexes tensors stays a 0-d tensor on the device: equal values and
gradients for several dtypes and shapes (one element, one-element non-0-d, non-contiguous, an empty dimension
beside the index); idempotent; refusals."""
from __future__ import annotations

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import index_reads  # noqa: E402

WTA = '''import torch
import torch.nn.functional as F


def wta(xy, fut):
    reg = 0.0
    for b in range(fut.shape[0]):
        ade = (xy[b] - fut[b, None]).norm(dim=-1).mean(-1)
        best = ade.argmin().item()
        reg = reg + F.smooth_l1_loss(xy[b, best], fut[b], reduction="sum") + xy[b][best].sum()
    return reg
'''

INT = '''import torch


def pick(table, score):
    k = int(score.argmax(0, keepdim=True))
    return table[k] * 2, table[:, k]
'''


def _run(fn, *args):
    leaves = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad([o.sum() for o in outs], [l for l in leaves if l.requires_grad], allow_unused=True)
    return outs, grads


def _equal(a, b, tol):
    return a.dtype == b.dtype and a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_loop_reads_stay_on_the_device_with_equal_values_and_gradients(dtype):
    loop = line_of(WTA, "for b in")
    (r,) = index_reads.candidates(WTA, loop)
    assert "best = ade.argmin()\n" in r.new_source and ".item()" not in r.new_source
    assert index_reads.candidates(r.new_source, loop) == []                           # idempotent
    (at_read,) = index_reads.candidates(WTA, line_of(WTA, "best ="))                  # the sync finding's line
    assert at_read.new_source == r.new_source
    old, new = load_function(WTA, "wta"), load_function(r.new_source, "wta")
    g = torch.Generator().manual_seed(0)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    for b, k, t in ((1, 1, 1), (2, 3, 5), (4, 6, 2)):
        xy = torch.randn(b, k, t, 2, generator=g).to(dtype)
        fut = torch.randn(b, t, 2, generator=g).to(dtype)
        (a,), ga = _run(old, xy, fut)
        (c,), gc = _run(new, xy, fut)
        assert _equal(a, c, tol)
        assert all(_equal(x, y, tol) for x, y in zip(ga, gc))
    # non-contiguous inputs
    xy = torch.randn(2, 3, 4, 2, generator=g).to(dtype).transpose(1, 2).contiguous().transpose(1, 2)
    xy = xy[..., [1, 0]]
    fut = torch.randn(4, 3, 2, generator=g).to(dtype).transpose(0, 1)[:2]
    assert _equal(old(xy, fut), new(xy, fut), tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_int_read_of_a_one_element_tensor(dtype):
    (r,) = index_reads.candidates(INT, line_of(INT, "k ="))
    assert ".reshape(()).long()" in r.new_source and r.needs_verification == []
    assert index_reads.candidates(r.new_source, line_of(r.new_source, "k =")) == []
    old, new = load_function(INT, "pick"), load_function(r.new_source, "pick")
    g = torch.Generator().manual_seed(1)
    for n, c in ((1, 1), (5, 3), (4, 0)):                  # (4, 0): empty second dim beside the index
        table = torch.randn(n, max(n, 1), c, generator=g).to(dtype) if dtype.is_floating_point \
            else torch.randint(0, 9, (n, max(n, 1), c), generator=g)
        score = torch.randn(n, generator=g)
        for x, y in zip(old(table, score), new(table, score)):
            assert _equal(x, y, 0)
    nc = torch.randn(3, 6, generator=g).t()[:3]            # non-contiguous table
    score = torch.randn(3, generator=g)
    for x, y in zip(old(nc, score), new(nc, score)):
        assert _equal(x, y, 0)


@pytest.mark.parametrize("use", [
    "return x[k] + k",                         # arithmetic
    "return x[k:k + 1]",                       # a slice bound
    "y = x[k]\n    y.add_(1)\n    return x",   # aliased whole, then changed in place
    "x[k] = 0\n    return x",                  # assigned to
    "x[k].mul_(2)\n    return x",              # changed in place
    "x[k].view(-1)[0] = 1\n    return x",      # written through a view
    "a, b = x[k], x[0]\n    return a",         # aliased in a tuple
    "return f'{k}'",                           # a format
    "return g(k)",                             # a call argument
    "k = k + 1\n    return x[k]",              # bound again
])
def test_refused_uses(use):
    src = f"import torch\n\n\ndef f(x, s):\n    k = s.argmax().item()\n    {use}\n"
    assert index_reads.candidates(src, 5) == []


def test_module_level_and_float_reads_refused():
    assert index_reads.candidates("import torch\nk = s.argmax().item()\ny = x[k]\n", 2) == []
    assert index_reads.candidates("import torch\n\n\ndef f(x, s):\n    k = float(s)\n    return x[k]\n", 5) == []
