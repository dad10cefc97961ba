"""`element_reads`: several elements of one tensor read as Python numbers on one line -> one `.tolist()`: the same
Python values and types for several dtypes and shapes (one-value elements of any shape, non-contiguous, negative
indices); idempotent; refusals."""
from __future__ import annotations

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import element_reads  # noqa: E402

DRAW = '''import torch


def corners(center, box):
    x, y = int(center[0]), int(center[1])
    return x, y, float(box[-1]) - box[0].item(), box[0].item()
'''


def _same(a, b) -> bool:
    return len(a) == len(b) and all(type(x) is type(y) and (x == y or (x != x and y != y)) for x, y in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
                                   torch.int64])
def test_same_python_values_as_one_read_each(dtype):
    src = DRAW
    (r,) = element_reads.candidates(src, line_of(src, "x, y ="))
    assert "center_host = center[[0, 1]].reshape(2).tolist()" in r.new_source
    assert r.needs_verification                                        # `center` is a parameter
    line2 = line_of(r.new_source, "return")
    (r2,) = element_reads.candidates(r.new_source, line2)             # the other line: `box` read three times
    assert "box_host = box[[-1, 0]].reshape(2).tolist()" in r2.new_source
    for done in (r2.new_source,):                                     # idempotent on both lines
        assert element_reads.candidates(done, line_of(done, "x, y =")) == []
        assert element_reads.candidates(done, line_of(done, "return")) == []
    old, new = load_function(src, "corners"), load_function(r2.new_source, "corners")
    g = torch.Generator().manual_seed(4)
    for shape in ((2,), (3,), (2, 1), (3, 1, 1)):
        center = (torch.randn(shape, generator=g) * 40).to(dtype)
        box = (torch.randn((4,) + shape[1:], generator=g) * 9).to(dtype)
        assert _same(old(center, box), new(center, box)), shape
    # non-contiguous
    center = (torch.randn(3, 5, generator=g) * 40).to(dtype).t()[0]
    box = (torch.randn(6, 2, generator=g) * 9).to(dtype)[:, 1]
    assert not center.is_contiguous() and not box.is_contiguous()
    assert _same(old(center, box), new(center, box))


def test_elements_with_several_values_still_raise():
    (r,) = element_reads.candidates(DRAW, line_of(DRAW, "x, y ="))
    old, new = load_function(DRAW, "corners"), load_function(r.new_source, "corners")
    center = torch.zeros(2, 2)
    for fn in (old, new):
        with pytest.raises((RuntimeError, ValueError)):     # ValueError before, RuntimeError (reshape) after
            fn(center, torch.zeros(4))


def test_proven_tensor_needs_no_verification():
    src = "import torch\n\n\ndef f(p):\n    c = p.sum(0)\n    return int(c[0]) * int(c[2])\n"
    (r,) = element_reads.candidates(src, 6)
    assert r.needs_verification == [] and r.auto_applicable


@pytest.mark.parametrize("line", [
    "x = int(c[0])",                                   # one read
    "x, y = int(c[0]), int(c[0])",                     # one element
    "x = int(c[0]) if flag else int(c[1])",            # evaluated only sometimes
    "x = flag and int(c[0]) + int(c[1])",
    "x = [int(c[0]) + int(c[1]) for _ in range(2)]",
    "x = int(c[i]) + int(c[1])",                       # not a literal index
    "c, y = int(c[0]), int(c[1])",                     # the tensor bound on the line
    "x = int(c()[0]) + int(c()[1])",                   # evaluated twice
])
def test_refusals(line):
    src = f"import torch\n\n\ndef f(c, flag, i):\n    {line}\n    return x\n"
    assert element_reads.candidates(src, 5) == []
