"""Vectorized loop rewrites: diff on realistic sources, git apply, idempotence, numeric equivalence."""
from __future__ import annotations

import pytest
import torch

from _codemod_helpers import git_apply_check, line_of, load_function
from npu_advise.recommendations.codemods import loops
from npu_advise.recommendations.codemods.diffs import sha256_text, to_fix

# PivotNet's interpolate (seed chapter 2.3.1), as a static method in its matcher class.
PIVOTNET = '''import torch
import torch.nn as nn


class HungarianMatcher(nn.Module):
    """Matches predicted polylines with ground truth."""

    @staticmethod
    def interpolate(start_pt, end_pt, inter_num):
        res = torch.zeros((inter_num, 2), dtype=start_pt.dtype, device=start_pt.device)
        num_len = inter_num + 1  # segment num.
        for i in range(1, num_len):
            ratio = i / num_len
            res[i-1] = (1 - ratio) * start_pt + ratio * end_pt
        return res


def interpolate(start_pt, end_pt, inter_num):
    res = torch.zeros((inter_num, 2), dtype=start_pt.dtype, device=start_pt.device)
    num_len = inter_num + 1  # segment num.
    for i in range(1, num_len):
        ratio = i / num_len
        res[i-1] = (1 - ratio) * start_pt + ratio * end_pt
    return res
'''

# PivotNet's valid-length mask (seed chapter 2.3.3), both subscript spellings.
MASKS = '''import torch


def build_mask(gt_pts, valid_len, n_pt):
    gt_pts_mask = torch.zeros((gt_pts.shape[0], n_pt), dtype=torch.float32)
    for i, ll in enumerate(valid_len):
        gt_pts_mask[i][:ll] = 1
    return gt_pts_mask


def fill_prefix(mask, lens):
    for i, n in enumerate(lens):
        mask[i, :n] = 1
    return mask
'''

ITEM_LOOP = '''import torch


def total_length(lengths):
    counts = lengths.cpu()
    total = 0
    for n in counts:
        total += n.item() * 2
    return total
'''


def test_interpolate_diff_applies_and_matches_seed_semantics(tmp_path):
    line = line_of(PIVOTNET, "res[i-1]")
    r = loops.rewrite_affine_interpolation(PIVOTNET, line)
    assert r is not None and r.auto_applicable
    fix = to_fix("models/matcher.py", PIVOTNET, r, "NPA501-test", "loops.affine_interpolation")
    assert fix.diff.startswith("--- a/models/matcher.py\n+++ b/models/matcher.py\n")
    assert "-        for i in range(1, num_len):" in fix.diff
    assert "+        ratio = (torch.arange(1, num_len, dtype=res.dtype, device=res.device) / num_len).unsqueeze(-1)" in fix.diff
    assert "+        res[:num_len - 1] = (1 - ratio) * start_pt + ratio * end_pt" in fix.diff
    assert fix.file_sha256 == sha256_text(PIVOTNET) and fix.patched_sha256 == sha256_text(r.new_source)
    git_apply_check(tmp_path, "models/matcher.py", PIVOTNET, fix.diff)
    assert (tmp_path / "models/matcher.py").read_text() == r.new_source
    # only the loop at `line` changed: the module-level copy keeps its loop
    assert r.new_source.count("for i in range(1, num_len):") == 1


def test_interpolate_is_idempotent():
    once = loops.rewrite_affine_interpolation(PIVOTNET, line_of(PIVOTNET, "res[i-1]")).new_source
    twice = loops.rewrite_affine_interpolation(once, line_of(PIVOTNET, "res[i-1]"))
    assert twice is None or twice.new_source == once


@pytest.mark.parametrize("seed", range(4))
def test_interpolate_numerically_equal(seed):
    lines = PIVOTNET.split("\n")
    line = [i for i, l in enumerate(lines, 1) if "res[i-1]" in l][1]      # the module-level function
    new = loops.rewrite_affine_interpolation(PIVOTNET, line).new_source
    old_f, new_f = load_function(PIVOTNET, "interpolate"), load_function(new, "interpolate")
    g = torch.Generator().manual_seed(seed)
    for inter_num in (0, 1, 5, 17):
        for dtype in (torch.float32, torch.float64):
            a = torch.randn(2, generator=g, dtype=dtype)
            b = torch.randn(2, generator=g, dtype=dtype)
            exp, got = old_f(a, b, inter_num), new_f(a, b, inter_num)
            assert got.shape == exp.shape and got.dtype == exp.dtype
            assert torch.allclose(got, exp, atol=1e-6, rtol=1e-6)
    # gradients flow the same way
    a = torch.randn(2, generator=g, requires_grad=True)
    b = torch.randn(2, generator=g, requires_grad=True)
    old_f(a, b, 5).square().sum().backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    new_f(a, b, 5).square().sum().backward()
    assert torch.allclose(a.grad, ga, atol=1e-6) and torch.allclose(b.grad, gb, atol=1e-6)


def test_interpolate_not_rewritten_when_loop_variable_is_used_after():
    src = PIVOTNET.replace("    return res\n", "    return res, ratio\n")
    line = [i for i, l in enumerate(src.split("\n"), 1) if "res[i-1]" in l][1]
    assert loops.rewrite_affine_interpolation(src, line) is None


def test_interpolate_without_visible_creation_is_advice_only():
    src = ("import torch\n\n\ndef fill(res, a, b, n):\n    for i in range(0, n):\n        r = i / n\n"
           "        res[i] = (1 - r) * a + r * b\n    return res\n")
    r = loops.rewrite_affine_interpolation(src, 6)
    assert r is not None and not r.auto_applicable
    assert any("must be 2-D" in c for c in r.needs_verification) and r.applicable_when_verified
    old_f, new_f = load_function(src, "fill"), load_function(r.new_source, "fill")
    a, b = torch.randn(3), torch.randn(3)
    assert torch.allclose(old_f(torch.zeros(4, 3), a, b, 4), new_f(torch.zeros(4, 3), a, b, 4), atol=1e-6)


@pytest.mark.parametrize("func,needle", [("build_mask", "gt_pts_mask[i][:ll]"), ("fill_prefix", "mask[i, :n]")])
def test_prefix_mask_diff_applies(tmp_path, func, needle):
    r = loops.rewrite_prefix_mask(MASKS, line_of(MASKS, needle))
    assert r is not None
    fix = to_fix("pivotnet/matcher.py", MASKS, r, "NPA501-x", "loops.prefix_mask")
    assert "masked_fill_" in fix.diff and f"-        {needle} = 1" in fix.diff
    git_apply_check(tmp_path, "pivotnet/matcher.py", MASKS, fix.diff)
    # the mask creation is visible only in build_mask
    assert r.auto_applicable == (func == "build_mask")
    again = loops.rewrite_prefix_mask(r.new_source, line_of(MASKS, needle))
    assert again is None or again.new_source == r.new_source


@pytest.mark.parametrize("seed", range(5))
def test_prefix_mask_numerically_equal_for_any_input(seed):
    new = loops.rewrite_prefix_mask(MASKS, line_of(MASKS, "mask[i, :n]")).new_source
    old_f, new_f = load_function(MASKS, "fill_prefix"), load_function(new, "fill_prefix")
    g = torch.Generator().manual_seed(seed)
    rows, cols = 3 + seed, 7
    for dtype in (torch.float32, torch.bool, torch.int64):
        # a non-zero mask before the loop, more rows than lengths, lengths negative / past the end
        base = (torch.rand(rows + 2, cols, generator=g) > 0.5).to(dtype)
        lens_t = torch.randint(-cols - 2, cols + 3, (rows,), generator=g)
        for lens in (lens_t, lens_t.tolist()):
            exp = old_f(base.clone(), lens)
            got = new_f(base.clone(), lens)
            assert got.dtype == exp.dtype and torch.equal(got, exp)
    # an empty list of lengths changes nothing
    base = torch.rand(2, 4, generator=g)
    assert torch.equal(new_f(base.clone(), []), base)


def test_seed_mask_numerically_equal():
    new = loops.rewrite_prefix_mask(MASKS, line_of(MASKS, "gt_pts_mask[i][:ll]")).new_source
    old_f, new_f = load_function(MASKS, "build_mask"), load_function(new, "build_mask")
    gt = torch.randn(6, 19, 2)
    lens = torch.randint(0, 20, (6,))
    assert torch.equal(old_f(gt, lens, 19), new_f(gt, lens, 19))


def test_item_loop_rewrite_equal_and_idempotent(tmp_path):
    r = loops.rewrite_item_loop(ITEM_LOOP, line_of(ITEM_LOOP, "n.item()"))
    assert r is not None and r.auto_applicable            # `counts` comes from `.cpu()`: a tensor
    assert "for n in counts.reshape(-1).tolist():" in r.new_source and "n.item()" not in r.new_source
    old_f, new_f = load_function(ITEM_LOOP, "total_length"), load_function(r.new_source, "total_length")
    for shape in ((5,), (4, 1), (0,)):
        x = torch.randint(0, 100, shape)
        assert old_f(x) == new_f(x)
    x = torch.rand(6, dtype=torch.float64)
    assert old_f(x) == new_f(x)                          # same Python float additions in the same order
    assert loops.rewrite_item_loop(r.new_source, line_of(ITEM_LOOP, "for n in")) is None
    git_apply_check(tmp_path, "a.py", ITEM_LOOP, to_fix("a.py", ITEM_LOOP, r, "x", "loops.item_loop").diff)


def test_item_loop_over_unknown_iterable_is_advice_only():
    src = "def f(xs):\n    out = []\n    for x in xs:\n        out.append(x.item())\n    return out\n"
    r = loops.rewrite_item_loop(src, 4)
    assert r is not None and not r.auto_applicable
    assert any("must be a tensor" in c for c in r.needs_verification) and r.applicable_when_verified


def test_rewrite_loop_picks_the_idiom_from_source():
    idiom, r = loops.rewrite_loop(MASKS, line_of(MASKS, "for i, ll in"), idiom=None)
    assert idiom == "prefix_mask"
    assert loops.rewrite_loop("def f(x):\n    for a in x:\n        print(a)\n", 2) is None


INDEXED_ITEM_LOOPS = '''import torch


def scaled_sum(scores):
    scores = scores.detach()
    acc = 0.0
    for k in range(len(scores)):
        acc += scores[k].item() * 2
    return acc


def copy_with_index(t, out):
    for j in range(len(t)):
        out[j] = t[j].item() + j
    return out


def changes_t(t):
    for j in range(len(t)):
        t = t * 2
        print(t[j].item())
'''


def test_indexed_item_loop_rewrite_equal_and_idempotent(tmp_path):
    src = INDEXED_ITEM_LOOPS
    r = loops.rewrite_item_loop(src, line_of(src, "acc += scores[k]"))
    assert r is not None and r.auto_applicable                     # `scores` comes from `.detach()`
    assert "for scores_k in scores.reshape(-1).tolist():" in r.new_source
    assert "acc += scores_k * 2" in r.new_source and "copy_with_index" in r.new_source
    # `j` is used besides the index: enumerate keeps it; `t` is a parameter, so the fix is advice only
    r2 = loops.rewrite_item_loop(src, line_of(src, "out[j] = t[j]"))
    assert "for j, t_j in enumerate(t.reshape(-1).tolist()):" in r2.new_source and not r2.auto_applicable
    assert any("must be a tensor" in c for c in r2.needs_verification) and r2.applicable_when_verified
    # `t` rebound in the body: the values read change mid-loop, no rewrite
    assert loops.rewrite_item_loop(src, line_of(src, "print(t[j]")) is None
    for shape in ((7,), (3, 1), (0,)):
        x = torch.rand(shape, dtype=torch.float64)
        assert load_function(src, "scaled_sum")(x) == load_function(r.new_source, "scaled_sum")(x)
        assert load_function(src, "copy_with_index")(x, [0.0] * len(x)) == \
            load_function(r2.new_source, "copy_with_index")(x, [0.0] * len(x))
    line = line_of(r.new_source, "for scores_k in")
    assert loops.rewrite_loop(r.new_source, line) is None          # applied: nothing left to rewrite
    git_apply_check(tmp_path, "a.py", src, to_fix("a.py", src, r, "x", "loops.item_loop").diff)
