"""`stacked_reads`: a comprehension of `.item()` reads -> one stacked `.tolist()`: the same Python values for
several dtypes and shapes, empty and one-entry containers; idempotent; refusals."""
from __future__ import annotations

from collections import OrderedDict

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import stacked_reads  # noqa: E402

DICT = '''import torch


def parse(log_vars):
    return log_vars["total"], {k: v.item() for k, v in log_vars.items()}
'''

LIST = '''import torch


def values(terms):
    return [float(t) for t in terms]
'''


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and (a == b or (a != a and b != b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_same_values_as_one_read_each(dtype):
    (r,) = stacked_reads.candidates(DICT, line_of(DICT, "return"))
    assert "torch.stack" in r.new_source and r.needs_verification
    old, new = load_function(DICT, "parse"), load_function(r.new_source, "parse")
    g = torch.Generator().manual_seed(1)
    for n in (1, 2, 9):
        for shape in ((), (1,), (1, 1)):
            d = OrderedDict((f"loss_{i}", torch.randn(shape, generator=g).to(dtype)) for i in range(n))
            d["total"] = torch.tensor(float("nan"), dtype=dtype).reshape(shape)
            assert _same(old(d), new(d))
    (r2,) = stacked_reads.candidates(LIST, line_of(LIST, "return"))
    old, new = load_function(LIST, "values"), load_function(r2.new_source, "values")
    for n in (0, 1, 5):
        terms = [torch.randn((), generator=g).to(dtype) for _ in range(n)]
        assert _same(old(terms), new(terms))
        assert _same(old(tuple(terms)), new(tuple(terms)))


def test_empty_and_mixed_kinds():
    (r,) = stacked_reads.candidates(DICT, line_of(DICT, "return"))
    new = load_function(r.new_source, "parse")
    assert new({"total": torch.tensor(1.0)}) == (torch.tensor(1.0), {"total": 1.0})
    # an integer among floats comes back as a float: why the verification stage has the last word
    mixed = {"total": torch.tensor(1.5), "count": torch.tensor(3)}
    assert type(load_function(DICT, "parse")(mixed)[1]["count"]) is int
    assert type(new(mixed)[1]["count"]) is float
    empty = '''import torch\n\n\ndef f(d):\n    return {k: v.item() for k, v in d.items()}\n'''
    (r,) = stacked_reads.candidates(empty, 5)
    assert load_function(r.new_source, "f")({}) == {}


def test_idempotent():
    for src in (DICT, LIST):
        (r,) = stacked_reads.candidates(src, line_of(src, "return"))
        assert stacked_reads.candidates(r.new_source, line_of(r.new_source, "return")) == []


@pytest.mark.parametrize("comp", [
    "{k: v.item() for k, v in d.items() if k != 'x'}",
    "{k: v.item() for k, v in get().items()}",
    "{k.upper(): v.item() for k, v in d.items()}",
    "{k: v.item() * 2 for k, v in d.items()}",
    "{k: v.item() for k, v in d}",
    "[t.item() for t in make()]",
    "[t.item() for row in d for t in row]",
])
def test_refusals(comp):
    src = f"import torch\n\n\ndef f(d, get, make):\n    return {comp}\n"
    assert stacked_reads.candidates(src, 5) == []
