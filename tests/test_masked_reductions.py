"""`masked_reductions`: the mean/sum of `masked_select` without materializing it: equal values and gradients for
several dtypes and shapes, empty and one-element masks; idempotent; refusals."""
from __future__ import annotations

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import masked_reductions  # noqa: E402

SRC = '''import torch


def loss(l1, vis):
    return torch.masked_select(l1, vis).{red}() * 0.25
'''


@pytest.mark.parametrize("red", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_equal_values_and_gradients(red, dtype):
    src = SRC.replace("{red}", red)
    (r,) = masked_reductions.candidates(src, line_of(src, "return"))
    assert "torch.where(vis, l1, 0).sum()" in r.new_source
    assert masked_reductions.candidates(r.new_source, line_of(r.new_source, "return")) == []
    old, new = load_function(src, "loss"), load_function(r.new_source, "loss")
    g = torch.Generator().manual_seed(2)
    tol = {torch.float16: 2e-3}.get(dtype, 1e-5)
    for shape in ((0,), (1,), (7,), (3, 5), (2, 4, 6)):
        x = torch.randn(shape, generator=g).to(dtype)
        for mask in (torch.zeros(shape, dtype=torch.bool), torch.ones(shape, dtype=torch.bool),
                     torch.rand(shape, generator=g) > 0.6):
            a_in, b_in = x.clone().requires_grad_(), x.clone().requires_grad_()
            a, b = old(a_in, mask), new(b_in, mask)
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol, equal_nan=True), (shape, mask)
            a.backward()
            b.backward()
            ga, gb = a_in.grad, b_in.grad
            assert torch.allclose(torch.nan_to_num(ga.double()), torch.nan_to_num(gb.double()), rtol=tol, atol=tol)
    # non-contiguous values
    x = torch.randn(6, 4, generator=g).to(dtype).t()
    mask = torch.rand(4, 6, generator=g) > 0.5
    assert torch.allclose(old(x, mask).double(), new(x, mask).double(), rtol=tol, atol=tol)


def test_method_form_and_refusals():
    src = "import torch\n\n\ndef f(x, m):\n    return x.masked_select(m).mean()\n"
    (r,) = masked_reductions.candidates(src, 5)
    assert "torch.where(m, x, 0).sum() / m.sum()" in r.new_source and r.needs_verification
    for body in ("x.masked_select(m).mean(0)", "x.masked_select(m).sum(dtype=torch.float64)",
                 "x[m].mean()", "torch.masked_select(x, mask=m).mean()"):
        src = f"import torch\n\n\ndef f(x, m):\n    return {body}\n"
        assert masked_reductions.candidates(src, 5) == []
