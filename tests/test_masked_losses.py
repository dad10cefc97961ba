"""`masked_losses`: a mean/sum-reduced loss of mask selections computed on the whole tensors weighted by the mask:
equal values and gradients (finite where the mask is off, even over inf/nan there) for several losses, dtypes and
shapes, empty / all-true / one-element masks, masks of rows, non-contiguous operands; idempotent; refusals."""
from __future__ import annotations

import pytest

from _codemod_helpers import line_of, load_function

torch = pytest.importorskip("torch")
from npu_advise.recommendations.codemods import masked_losses  # noqa: E402

SRC = '''import torch
import torch.nn.functional as F


def loss(pred, tgt, score):
    m = score > 0.5
    out = {expr}
    return out
'''

EXPRS = {
    "smooth_l1": "F.smooth_l1_loss(pred[m], tgt[m], beta=0.5)",
    "l1_sum": "F.l1_loss(pred[m], tgt[m], reduction=\"sum\")",
    "mse": "F.mse_loss(pred[m], tgt[m])",
    "bce_logits": "F.binary_cross_entropy_with_logits(pred[m], tgt[m].sigmoid())",
    "abs_mean": "((pred[m] - tgt[m]).abs() * 2 - 1).mean()",
    "pow_mean": "((pred[m] - tgt[m]) ** 2 / 4).mean()",
    "sum": "pred[m].clamp(min=-1.0).sum()",
    "guarded": "F.smooth_l1_loss(pred[m], tgt[m]) if m.sum() > 0 else pred.sum() * 0",
}


def _run(fn, pred, tgt, score):
    p, t = pred.clone().requires_grad_(), tgt.clone().requires_grad_()
    out = fn(p, t, score)
    out.backward()
    # an input the original's graph did not reach (the guard's zero branch) has the zero gradient
    return out, *(torch.zeros_like(x) if x.grad is None else x.grad for x in (p, t))


@pytest.mark.parametrize("kind", sorted(EXPRS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_equal_values_and_gradients(kind, dtype):
    if dtype is torch.float16 and kind == "bce_logits":
        pytest.skip("no float16 sigmoid-BCE on the CPU")
    src = SRC.replace("{expr}", EXPRS[kind])
    (r,) = masked_losses.candidates(src, line_of(src, "out ="))
    assert "[m]" not in r.new_source and "torch.where(m.reshape(" in r.new_source
    assert masked_losses.candidates(r.new_source, line_of(r.new_source, "out =")) == []      # idempotent
    assert masked_losses.candidates(r.new_source, line_of(r.new_source, "out_rows =")) == []
    old, new = load_function(src, "loss"), load_function(r.new_source, "loss")
    g = torch.Generator().manual_seed(3)
    tol = {torch.float16: 3e-3}.get(dtype, 1e-5)
    for shape, mshape in (((0,), (0,)), ((1,), (1,)), ((7,), (7,)), ((5, 3), (5,)), ((2, 4, 3), (2, 4)),
                          ((3, 4), (3, 4))):
        pred, tgt = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
        for score in (torch.zeros(mshape), torch.rand(mshape, generator=g), torch.ones(mshape)):   # empty, some, all
            a, b = _run(old, pred, tgt, score), _run(new, pred, tgt, score)
            assert a[0].dtype == b[0].dtype and a[0].shape == b[0].shape
            for x, y in zip(a, b):
                assert torch.allclose(x.double(), y.double(), rtol=tol, atol=tol, equal_nan=True), (kind, shape, score)
    # masked-off rows holding inf / nan: the selection ignores them, so must the rewrite (values and gradients)
    pred = torch.randn(6, 2, generator=g).to(dtype)
    tgt = torch.randn(6, 2, generator=g).to(dtype)
    score = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    tgt[1], tgt[3] = float("inf"), float("nan")
    a, b = _run(old, pred, tgt, score), _run(new, pred, tgt, score)
    assert all(torch.isfinite(y).all() for y in b)
    for x, y in zip(a, b):
        assert torch.allclose(x.double(), y.double(), rtol=tol, atol=tol), kind
    # non-contiguous operands
    pred, tgt = torch.randn(3, 6, generator=g).to(dtype).t(), torch.randn(3, 6, generator=g).to(dtype).t()
    score = torch.rand(6, generator=g)
    assert not pred.is_contiguous()
    a, b = _run(old, pred, tgt, score), _run(new, pred, tgt, score)
    for x, y in zip(a, b):
        assert torch.allclose(x.double(), y.double(), rtol=tol, atol=tol), kind


def test_guard_and_verification_needs():
    src = SRC.replace("{expr}", EXPRS["guarded"])
    (r,) = masked_losses.candidates(src, line_of(src, "out ="))
    assert ".clamp(min=1)" in r.new_source and "if m.sum()" not in r.new_source
    assert r.needs_verification and not r.auto_applicable and r.applicable_when_verified
    src = SRC.replace("{expr}", "((pred[m] - tgt[m]) * self_w).mean()").replace("score):", "score, self_w):")
    (r,) = masked_losses.candidates(src, line_of(src, "out ="))
    assert any("broadcast" in n for n in r.needs_verification)


@pytest.mark.parametrize("text", [
    "torch.log(pred[m]).mean()",                     # not finite at every input: nan gradients where m is off
    "(pred[m] / tgt[m]).mean()",                     # division by a tensor
    "pred[m].mean(0)",                               # a reduction over a dim
    "F.smooth_l1_loss(pred[m], tgt[score > 0.1])",   # two masks
    "F.smooth_l1_loss(pred[m], tgt[m], weight=score)",
    "F.cross_entropy(pred[m], tgt[m])",
    "(pred[m] - w).abs().mean()",                    # w is bound from the mask: a per-selection value
    "F.smooth_l1_loss(pred[m], tgt[m]) if score.sum() > 0 else pred.sum() * 0",   # guard on another tensor
    "F.smooth_l1_loss(pred[m], tgt[m]) if m.sum() > 0 else 0.0",                  # not a zero tensor
    "[F.l1_loss(pred[m], tgt[m]) for _ in range(2)]",
    "pred[m].sum(dtype=torch.float64)",
    "pred[m.nonzero()].mean()",
])
def test_refusals(text):
    src = SRC.replace("{expr}", text).replace("    out =", "    w = tgt[m] * 2\n    out =")
    assert masked_losses.candidates(src, line_of(src, "out =")) == []


def test_whole_script_verified_and_applied_trains_the_same(tmp_path):
    """Through the CLI: the loss function's rewrite is verified beside the original, the guarded loss in the training
    loop by the whole-run check; applied, the script prints the same losses (nan where a step has no positive, as
    the mean of an empty selection is)."""
    import math
    import re
    import shutil
    import subprocess
    import sys

    from conftest import SCRIPTS, read_json, run_cli

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(SCRIPTS / "masked_loss_train.py", proj / "masked_loss_train.py")
    r = run_cli("profile", "--out", tmp_path / "out", proj / "masked_loss_train.py", cwd=proj,
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    fixes = {f["locations"][0]["line"]: f["fix"] for f in read_json(tmp_path / "out" / "findings.json")["findings"]
             if (f.get("fix") or {}).get("catalog_ref") == "rewrites.masked_losses"}
    assert set(fixes) == {12, 29}, fixes
    assert all(fx["verification"]["status"] == "verified" and fx["auto_applicable"] for fx in fixes.values()), fixes
    assert fixes[29]["verification"]["check"] == "whole run"

    def losses():
        out = subprocess.run([sys.executable, "masked_loss_train.py"], cwd=proj, capture_output=True, text=True,
                             timeout=300).stdout
        return [float(x) for x in re.findall(r"loss (\S+)", out)]

    before = losses()
    r = run_cli("apply", tmp_path / "out", cwd=proj)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (proj / "masked_loss_train.py").read_text()
    assert "[fg]" not in text and "[pos]" not in text
    after = losses()
    assert len(before) == len(after) == 12 and any(math.isnan(x) for x in before)
    assert all((math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-4) for a, b in zip(before, after))
