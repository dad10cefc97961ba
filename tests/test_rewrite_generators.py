"""Candidate generators beyond the guide's idioms: each rewrite is executed beside the original on several
shapes and dtypes (empty, one element, non-contiguous included) and must give the same results; applying a
generator to its own output finds nothing more (idempotence); what cannot be proven is marked for
verification and is not auto-applicable."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _codemod_helpers import line_of, load_function
from npu_advise.recommendations.codemods import checks, map_loops, scalar_reads, segments, transfers


def _pair(source: str, rewrite, name: str):
    return load_function(source, name), load_function(rewrite.new_source, name)


def _same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, (a, b)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    elif isinstance(a, np.ndarray):
        np.testing.assert_allclose(a, b)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b and type(a) is type(b), (a, b)


def _idempotent(module, new_source: str, line: int) -> None:
    """A second pass over the rewritten code at the same place changes nothing."""
    again = module.candidates(new_source, line)
    assert all(r.new_source == new_source for r in again), [r.generator for r in again]


# ---------------------------------------------------------------------------------------------
# scalar_reads
# ---------------------------------------------------------------------------------------------
SCALARS = '''import torch


def prefix_rows(lens, width):
    lens = torch.as_tensor(lens)
    mask = torch.zeros(len(lens), width)
    for i, ll in enumerate(lens):
        mask[i, :ll] = 1
        mask[i, ll:] = -1
    return mask


def split_sizes(value, shapes):
    return value.split([int(h) * int(w) for h, w in shapes], dim=1)


def weighted(counts, n):
    counts = counts.flatten()
    total = 0
    for i in range(n):
        k = int(counts[i])
        total += counts[i].item() * 2 + k
    return total
'''


@pytest.mark.parametrize("lens", [[], [3], [0, 5, 2, 7], list(range(9, -1, -1))])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_scalar_reads_iterated(lens, dtype):
    [r] = scalar_reads.candidates(SCALARS, line_of(SCALARS, "mask[i, :ll] = 1"))
    assert r.auto_applicable and not r.needs_verification          # torch.as_tensor proves a tensor
    assert "enumerate(lens.reshape(-1).tolist())" in r.new_source
    old, new = _pair(SCALARS, r, "prefix_rows")
    t = torch.tensor(lens, dtype=dtype)
    _same(old(t, 6), new(t, 6))
    strided = torch.tensor(lens * 2, dtype=dtype)[::2]                # non-contiguous
    _same(old(strided, 6), new(strided, 6))
    _idempotent(scalar_reads, r.new_source, line_of(r.new_source, "mask[i, :ll] = 1"))


@pytest.mark.parametrize("shapes", [[[4, 6]], [[4, 6], [2, 3]], [[1, 1], [2, 2], [3, 1]]])
def test_scalar_reads_comprehension_needs_verification_when_not_visibly_a_tensor(shapes):
    [r] = scalar_reads.candidates(SCALARS, line_of(SCALARS, "value.split"))
    assert not r.auto_applicable and any("`shapes` is a tensor" in n for n in r.needs_verification)
    old, new = _pair(SCALARS, r, "split_sizes")
    s = torch.tensor(shapes)
    value = torch.randn(2, int((s[:, 0] * s[:, 1]).sum()), 3)
    _same(old(value, s), new(value, s))
    _same(old(value, s.t().contiguous().t()), new(value, s.t().contiguous().t()))   # non-contiguous rows


@pytest.mark.parametrize("n", [0, 1, 5])
@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_scalar_reads_indexed(n, dtype):
    [r] = scalar_reads.candidates(SCALARS, line_of(SCALARS, "k = int(counts[i])"))
    assert "counts_host = counts.reshape(-1).tolist()" in r.new_source and "int(counts_host[i])" in r.new_source
    assert r.auto_applicable                                          # counts.flatten() is a tensor method
    old, new = _pair(SCALARS, r, "weighted")
    counts = (torch.arange(12, dtype=dtype) * 1.5).to(dtype).view(6, 2)[:, :1]   # (6, 1), non-contiguous
    _same(old(counts, n), new(counts, n))
    _idempotent(scalar_reads, r.new_source, line_of(r.new_source, "k = int(counts_host[i])"))


def test_scalar_reads_refuses_tensor_uses_and_flags_comparisons():
    src = '''import torch


def f(lens, x):
    lens = torch.as_tensor(lens)
    out = []
    for ll in lens:
        out.append(x * ll)
    for ll in lens:
        if ll > 3:
            out.append(x)
    return out
'''
    assert scalar_reads.candidates(src, line_of(src, "x * ll")) == []            # ll used as a tensor
    [r] = scalar_reads.candidates(src, line_of(src, "if ll > 3"))
    assert not r.auto_applicable and any("double precision" in n for n in r.needs_verification)


# ---------------------------------------------------------------------------------------------
# map_loops: broadcast, vmap, stacked lists
# ---------------------------------------------------------------------------------------------
MAPS = '''import torch
import torch.nn.functional as F


def rows(a, b, c, n):
    out = torch.zeros(n, a.shape[1], dtype=a.dtype)
    for i in range(n):
        t = a[i] * c
        out[i] = torch.sigmoid(t) + b[i]
    return out


def normalized(points):
    res = []
    for p in points:
        centre = p.mean(0)
        res.append((p - centre) / (p - centre).norm(dim=-1).amax().clamp(min=1e-6))
    return torch.stack(res)


def ramps(x):
    return torch.stack([row * 2 + i for i, row in enumerate(x)], 1)


def sample_levels(feats, grids):
    sampled = []
    for f, g in zip(feats, grids):
        sampled.append(F.grid_sample(f, g, align_corners=False))
    return sampled
'''


@pytest.mark.parametrize("n", [0, 1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_map_index_assign_broadcast_and_vmap(n, dtype):
    found = map_loops.candidates(MAPS, line_of(MAPS, "out[i] = torch.sigmoid"))
    # `a` / `b` may be lists of tensors: a stacked variant comes last
    assert [r.generator for r in found] == ["map_broadcast", "map_vmap", "level_batch"]
    found = found[:2]
    assert "out[:n] = torch.sigmoid(t) + b[:n]" in found[0].new_source
    assert "torch.vmap(_out_one)(a[:n], b[:n])" in found[1].new_source
    a = torch.randn(3, n + 2, dtype=dtype).t()                        # non-contiguous (n + 2, 3)
    b, c = torch.randn(n + 2, 3, dtype=dtype), torch.randn(3, dtype=dtype)
    for r in found:
        assert not r.auto_applicable and r.needs_verification
        old, new = _pair(MAPS, r, "rows")
        _same(old(a, b, c, n), new(a, b, c, n))
        _idempotent(map_loops, r.new_source, line_of(r.new_source, "return out"))


@pytest.mark.parametrize("shape", [(1, 5, 2), (6, 5, 2), (4, 1, 3)])
def test_map_append_stack_vmap(shape):
    r, stacked = map_loops.candidates(MAPS, line_of(MAPS, "centre = p.mean(0)"))
    assert stacked.generator == "level_batch"             # `points` may be a list of tensors
    assert r.generator == "map_vmap" and "res = torch.vmap(_res_one)(points)" in r.new_source
    assert "return res" in r.new_source and "torch.stack(res)" not in r.new_source
    old, new = _pair(MAPS, r, "normalized")
    pts = torch.randn(*shape)
    _same(old(pts), new(pts))
    _same(old(pts.transpose(1, 2).contiguous().transpose(1, 2)), new(pts.transpose(1, 2).contiguous().transpose(1, 2)))


@pytest.mark.parametrize("shape", [(1, 3), (5, 4)])
def test_map_comprehension_with_index_as_number(shape):
    r = map_loops.candidates(MAPS, line_of(MAPS, "row * 2 + i"))[0]
    assert "torch.arange(len(x), device=x.device)" in r.new_source and "out_dims=1" in r.new_source
    old, new = _pair(MAPS, r, "ramps")
    x = torch.randn(*shape)
    _same(old(x), new(x))
    _idempotent(map_loops, r.new_source, line_of(r.new_source, "def ramps") + 1)


@pytest.mark.parametrize("levels", [1, 3])
def test_level_batch_stacks_same_shaped_lists(levels):
    found = map_loops.candidates(MAPS, line_of(MAPS, "F.grid_sample(f, g"))
    assert [r.generator for r in found] == ["map_vmap", "level_batch"]
    stacked = found[1]
    assert "torch.stack(feats), torch.stack(grids)" in stacked.new_source
    assert any("equal shapes" in n for n in stacked.needs_verification)
    old, new = _pair(MAPS, stacked, "sample_levels")
    feats = [torch.randn(2, 4, 8, 8) for _ in range(levels)]
    grids = [torch.rand(2, 5, 5, 2) * 2 - 1 for _ in range(levels)]
    _same(old(feats, grids), new(feats, grids))
    # levels of different sizes: the stacked candidate raises (verification rejects it), the loop stays right
    with pytest.raises(RuntimeError):
        new([torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)], grids[:1] * 2)


def test_map_loops_refuse_carried_values_and_side_effects():
    src = '''import torch


def running(xs, log):
    acc = torch.zeros(3)
    out = []
    for x in xs:
        acc = acc + x
        out.append(acc)
    for x in xs:
        log.append(x)
        out.append(x * 2)
    for x in xs:
        if x.sum() > 0:
            break
        out.append(x)
    return out
'''
    for needle in ("acc = acc + x", "log.append(x)", "if x.sum() > 0"):
        assert map_loops.candidates(src, line_of(src, needle)) == [], needle


# ---------------------------------------------------------------------------------------------
# segment_reduce
# ---------------------------------------------------------------------------------------------
SEGMENTS = '''import torch


def group_sums(x, labels, num_groups):
    out = torch.zeros(num_groups, x.shape[1], dtype=x.dtype)
    for g in range(num_groups):
        out[g] = x[labels == g].sum(0)
    return out


def group_means(x, labels, num_groups):
    out = torch.full((num_groups, x.shape[1]), 7.0, dtype=x.dtype)
    for g in range(num_groups):
        out[g] = x[labels == g].mean(dim=0)
    return out


def group_counts(labels, num_groups):
    counts = torch.zeros(num_groups, dtype=torch.long)
    for g in range(num_groups):
        counts[g] = (labels == g).sum()
    return counts


def present_max(x, labels):
    out = torch.zeros(int(labels.max()) + 1 if labels.numel() else 0, x.shape[1], dtype=x.dtype)
    for g in labels.unique():
        out[g] = x[labels == g].max(0).values
    return out
'''


@pytest.mark.parametrize("rows", [0, 1, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_segment_sum_mean_count(rows, dtype):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(4, rows, generator=gen, dtype=dtype).t()            # non-contiguous (rows, 4)
    labels = torch.randint(-1, 6, (rows,), generator=gen)               # -1 and 5: outside range(5)
    for name, needle, args in (("group_sums", ".sum(0)", (x, labels, 5)), ("group_means", ".mean(dim=0)", (x, labels, 5)),
                               ("group_counts", "(labels == g).sum()", (labels, 5))):
        [r] = segments.candidates(SEGMENTS, line_of(SEGMENTS, needle))
        assert not r.auto_applicable and "for g in" not in r.new_source.split(f"def {name}")[1].split("return")[0]
        old, new = _pair(SEGMENTS, r, name)
        _same(old(*args), new(*args))
        _idempotent(segments, r.new_source, line_of(r.new_source, f"def {name}") + 2)


@pytest.mark.parametrize("rows", [1, 9])
def test_segment_unique_max(rows):
    r, first = segments.candidates(SEGMENTS, line_of(SEGMENTS, ".max(0).values"))
    assert "torch.unique(labels, return_inverse=True)" in r.new_source and '"amax"' in r.new_source
    labels = torch.tensor([3, 0, 3, 1, 0, 3, 1, 1, 0][:rows])
    x = torch.randn(rows, 3).relu().requires_grad_()            # ties at 0
    for cand in (r, first):
        old, new = _pair(SEGMENTS, cand, "present_max")
        _same(old(x, labels), new(x, labels))
    # with ties the gradient of .max(0) goes to the first tied row: only the gathering candidate does the same
    old, new = _pair(SEGMENTS, first, "present_max")
    g = torch.randn_like(old(x, labels))
    _same(*[torch.autograd.grad((f(x, labels) * g).sum(), x)[0] for f in (old, new)])


# ---------------------------------------------------------------------------------------------
# device_checks
# ---------------------------------------------------------------------------------------------
CHECKS = '''import torch


def finite_loss(pred, target):
    loss = (pred - target).pow(2)
    assert torch.isfinite(loss).all(), "loss is not finite"
    return loss.mean()


def positives(scores):
    n = len(torch.nonzero(scores > 0.5))
    m = (scores > 0.9).nonzero().shape[0]
    return n, m
'''


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 4)])
def test_assert_async(shape):
    [r] = checks.candidates(CHECKS, line_of(CHECKS, "assert torch.isfinite"))
    assert 'torch._assert_async(torch.isfinite(loss).all(), "loss is not finite")' in r.new_source
    assert r.auto_applicable
    old, new = _pair(CHECKS, r, "finite_loss")
    p, t = torch.randn(*shape), torch.randn(*shape)
    _same(old(p, t), new(p, t))
    with pytest.raises(RuntimeError, match="loss is not finite"):
        new(torch.full((2,), float("inf")), torch.zeros(2))
    assert checks.candidates(r.new_source, line_of(r.new_source, "_assert_async")) == []


def test_assert_with_computed_message_is_refused():
    src = 'import torch\n\n\ndef f(x):\n    assert (x > 0).all(), f"bad {x.min().item()}"\n    return x\n'
    assert checks.candidates(src, 5) == []


@pytest.mark.parametrize("shape", [(0,), (1,), (5, 3)])
def test_count_nonzero(shape):
    [r] = checks.candidates(CHECKS, line_of(CHECKS, "len(torch.nonzero"))
    assert "n = int(torch.count_nonzero(scores > 0.5))" in r.new_source and r.auto_applicable
    [r2] = checks.candidates(r.new_source, line_of(r.new_source, ".nonzero().shape[0]"))
    assert not r2.auto_applicable                              # `(scores > 0.9)` of an unknown `scores`
    old, new = _pair(CHECKS, r2, "positives")
    s = torch.rand(*shape)
    _same(old(s), new(s))
    _same(old(s.t() if s.dim() == 2 else s), new(s.t() if s.dim() == 2 else s))


# ---------------------------------------------------------------------------------------------
# host_transfers
# ---------------------------------------------------------------------------------------------
TRANSFERS = '''import torch


def to_host_boxes(boxes):
    boxes = boxes.float()
    kept = []
    for box in boxes:
        arr = box.detach().cpu().numpy()
        kept.append(arr[:2].sum() > 0)
    return kept


def per_image(preds, n):
    out = []
    for i in range(n):
        out.append(preds[i].cpu().numpy().tolist())
    return out
'''


@pytest.mark.parametrize("rows", [0, 1, 6])
def test_host_transfers(rows):
    [r] = transfers.candidates(TRANSFERS, line_of(TRANSFERS, "box.detach().cpu().numpy()"))
    assert "boxes_host = boxes.detach().cpu().numpy()" in r.new_source and r.auto_applicable
    old, new = _pair(TRANSFERS, r, "to_host_boxes")
    b = torch.randn(4, rows).t()
    assert old(b) == new(b)
    [r2] = transfers.candidates(TRANSFERS, line_of(TRANSFERS, "preds[i].cpu()"))
    assert "preds_host = torch.stack(preds).cpu().numpy()" in r2.new_source and not r2.auto_applicable
    old, new = _pair(TRANSFERS, r2, "per_image")
    preds = [torch.randn(3) for _ in range(rows)]
    if rows:
        assert old(preds, rows) == new(preds, rows)
    _idempotent(transfers, r.new_source, line_of(r.new_source, "arr = "))


def test_every_generator_is_documented_with_its_rules():
    from click.testing import CliRunner

    from npu_advise.cli import cli

    out = CliRunner().invoke(cli, ["rules", "NPA501"]).output
    for name in ("scalar_reads", "host_transfers", "segment_reduce", "map_broadcast", "map_vmap", "level_batch",
                 "affine_interpolation", "prefix_mask", "item_loop"):
        assert f"Automatic rewrite `{name}`:" in out, name
    assert "proven by verification on your run:" in out
    sync = CliRunner().invoke(cli, ["rules", "NPA302"]).output
    assert "Automatic rewrite `device_checks`:" in sync and "map_vmap" not in sync


SEGMENT_LISTS = '''import torch


def pillar_max(point_feats, group_ids):
    groups = torch.unique(group_ids)
    pooled = []
    for g in groups:
        pooled.append(point_feats[group_ids == g].max(0).values)
    return torch.stack(pooled)


def class_sums(x, labels, n):
    sums = [torch.zeros(3)]
    for c in range(n):
        sums.append(x[labels == c].sum(0))
    return sums
'''


@pytest.mark.parametrize("rows", [1, 12])
def test_segment_collected_results(rows):
    gen = torch.Generator().manual_seed(rows)
    ids = torch.randint(0, 4, (rows,), generator=gen) * 3
    x = torch.randn(rows, 3, generator=gen)
    r, first = segments.candidates(SEGMENT_LISTS, line_of(SEGMENT_LISTS, "pooled.append"))
    old, new = _pair(SEGMENT_LISTS, first, "pillar_max")
    _same(old(x, ids), new(x, ids))
    assert "torch.searchsorted(groups, group_ids)" in r.new_source and "return pooled" in r.new_source
    old, new = _pair(SEGMENT_LISTS, r, "pillar_max")
    _same(old(x, ids), new(x, ids))
    [r] = segments.candidates(SEGMENT_LISTS, line_of(SEGMENT_LISTS, "sums.append"))
    assert "sums.extend(" in r.new_source                # the list holds an earlier item: extended, not replaced
    old, new = _pair(SEGMENT_LISTS, r, "class_sums")
    _same(old(x, ids, 7), new(x, ids, 7))


ACCUMULATE = '''import torch
import torch.nn.functional as F


def mean_over_cameras(img_feats, proj, points):
    b, n = img_feats.shape[:2]
    acc = img_feats.new_zeros(b, img_feats.shape[2], points.shape[0], 1)
    hits = img_feats.new_zeros(b, 1, points.shape[0], 1)
    for cam_id in range(n):
        uv = (proj[:, cam_id].unsqueeze(1) @ points.unsqueeze(-1)).squeeze(-1)
        visible = (uv.abs() <= 1).all(-1, keepdim=True).float()
        sampled = F.grid_sample(img_feats[:, cam_id], uv.unsqueeze(2), align_corners=False)
        acc = acc + sampled * visible.unsqueeze(1)
        hits += visible.unsqueeze(1)
    return acc / hits.clamp(min=1)
'''


@pytest.mark.parametrize("cams", [0, 1, 4])
def test_map_vmap_sums_and_maps_over_a_non_leading_dim(cams):
    found = map_loops.candidates(ACCUMULATE, line_of(ACCUMULATE, "for cam_id in range(n)"))
    r = found[0]
    assert r.generator == "map_vmap" and "(proj[:, :n].movedim(1, 0), img_feats[:, :n].movedim(1, 0))" in r.new_source
    assert "acc = acc + acc_parts.sum(0)" in r.new_source and "hits += hits_parts.sum(0)" in r.new_source
    assert any("another order" in n for n in r.needs_verification)
    old, new = _pair(ACCUMULATE, r, "mean_over_cameras")
    gen = torch.Generator().manual_seed(cams)
    feats = torch.randn(2, cams, 3, 6, 6, generator=gen)
    proj = torch.randn(2, cams, 2, 2, generator=gen) * 0.5
    points = torch.rand(7, 2, generator=gen) * 2 - 1
    if cams == 0:       # said in the constraints: verification on a run with cameras cannot see this case
        assert any("zero iterations" in c for c in r.constraints)
        with pytest.raises(RuntimeError):
            new(feats, proj, points)
        return
    _same(old(feats, proj, points), new(feats, proj, points))
    _idempotent(map_loops, r.new_source, line_of(r.new_source, "return acc / hits"))


NEW_AXIS = '''import torch
import torch.nn.functional as F


def collision(ego, agents, valid, safe=3.0):
    total = ego.new_zeros(())
    steps = ego.shape[1]
    for t in range(steps):
        dist = torch.linalg.norm(agents[:, :, t] - ego[:, None, t], dim=-1)
        total = total + (F.relu(safe - dist) * valid).sum() / valid.sum().clamp(min=1.0)
    return total / max(steps, 1)


def offsets(ego, anchors):
    return torch.stack([ego[None, :, t] - anchors[t] for t in range(anchors.shape[0])])


def sweeps(rots, pts, stamps, n):
    out = []
    for k in range(n):
        xyz = torch.einsum("bij,bnj->bni", rots[:, k], pts[:, k, :, :3]) + pts[:, k, :1, -1, None]
        dt = (stamps[:, k:k + 1] - stamps[:, :1]).expand(-1, pts.shape[2])[..., None]
        out.append(torch.cat([xyz, dt, pts[:, k, :, 3:4]], -1))
    return torch.stack(out, 1)
'''


@pytest.mark.parametrize("steps,agents,contiguous", [(0, 3, True), (1, 1, True), (6, 4, True), (5, 3, False)])
def test_map_vmap_keeps_new_axes_of_an_indexed_operand(steps, agents, contiguous):
    # `ego[:, None, t]`: the loop index on ego's dim 1, a new axis before it -> ego mapped over dim 1, the element
    # read as `ego_t[:, None]`
    r = map_loops.candidates(NEW_AXIS, line_of(NEW_AXIS, "for t in range(steps)"))[0]
    assert r.generator == "map_vmap" and "ego_t[:, None]" in r.new_source and "ego[:, :steps].movedim(1, 0)" in r.new_source
    old, new = _pair(NEW_AXIS, r, "collision")
    gen = torch.Generator().manual_seed(steps)
    ego = torch.randn(2, steps, 2, generator=gen) * 3
    others = torch.randn(2, agents, steps, 2, generator=gen) * 3
    if not contiguous:
        ego, others = ego.transpose(0, 1).contiguous().transpose(0, 1), others.flip(-1)
    valid = (torch.rand(2, agents, generator=gen) > 0.3).float()
    if steps == 0:       # vmap over zero iterations raises: said in the constraints
        assert any("zero iterations" in c for c in r.constraints)
        with pytest.raises((RuntimeError, IndexError)):
            new(ego, others, valid)
    else:
        _same(old(ego, others, valid), new(ego, others, valid))
        ego.requires_grad_(True)
        g_old, = torch.autograd.grad(old(ego, others, valid), ego)
        g_new, = torch.autograd.grad(new(ego, others, valid), ego)
        _same(g_old, g_new)
    _idempotent(map_loops, r.new_source, line_of(r.new_source, "return total / max(steps, 1)"))
    # a leading new axis in a comprehension: `ego[None, :, t]` -> `ego_t[None]`
    c = map_loops.candidates(NEW_AXIS, line_of(NEW_AXIS, "torch.stack([ego[None, :, t]"))
    vm = next(x for x in c if x.generator == "map_vmap")
    assert "ego_t[None]" in vm.new_source
    old, new = _pair(NEW_AXIS, vm, "offsets")
    anchors = torch.randn(max(steps, 1), 2, 2, generator=gen)
    ego = torch.randn(2, max(steps, 1), 2, generator=gen)
    _same(old(ego, anchors), new(ego, anchors))


@pytest.mark.parametrize("n,contiguous", [(1, True), (3, True), (4, False)])
def test_map_vmap_maps_reads_with_integer_and_slice_elements(n, contiguous):
    # `pts[:, k, :, :3]`, `pts[:, k, :1, -1, None]` (basic indexing beside the loop index) and `stamps[:, k:k + 1]`
    # (the element at k with its dim kept) are read from the mapped element
    r = map_loops.candidates(NEW_AXIS, line_of(NEW_AXIS, "for k in range(n)"))[0]
    assert r.generator == "map_vmap"
    assert "pts_k[:, :, :3]" in r.new_source and "pts_k[:, :1, -1, None]" in r.new_source
    assert "stamps_k[:, None]" in r.new_source and "stamps[:, :1]" in r.new_source
    old, new = _pair(NEW_AXIS, r, "sweeps")
    gen = torch.Generator().manual_seed(n)
    rots = torch.randn(2, n, 3, 3, generator=gen)
    pts = torch.randn(2, n, 5, 4, generator=gen)
    stamps = torch.rand(2, n, generator=gen)
    if not contiguous:
        rots, pts = rots.transpose(-1, -2), pts.flip(2)
    _same(old(rots, pts, stamps, n), new(rots, pts, stamps, n))
    _idempotent(map_loops, r.new_source, line_of(r.new_source, "out = torch.vmap(_out_one, out_dims=1)"))


FOREACH = '''import torch


def ema_update(ema_state, model_state, d):
    for k, v in ema_state.items():
        if v.dtype.is_floating_point:
            v *= d
            v += (1 - d) * model_state[k].detach()


def sgd(params, lr):
    for p in params:
        p.sub_(p.grad, alpha=lr)
'''


@pytest.mark.parametrize("shapes", [[], [(3,)], [(2, 3), (4,), (1, 1)]])
def test_foreach_updates(shapes):
    from npu_advise.recommendations.codemods import foreach

    [r] = foreach.candidates(FOREACH, line_of(FOREACH, "v *= d"))
    assert "torch._foreach_mul_(v_list, d)" in r.new_source
    assert "torch._foreach_add_(v_list, [model_state[k].detach() for k, v in pairs], alpha=(1 - d))" in r.new_source
    assert any("twice" in n for n in r.needs_verification) and not r.auto_applicable
    old, new = _pair(FOREACH, r, "ema_update")
    gen = torch.Generator().manual_seed(len(shapes))

    def states():
        s = {f"w{i}": torch.randn(*sh, generator=gen) for i, sh in enumerate(shapes)}
        s["steps"] = torch.tensor(3)                           # not floating point: filtered out
        return s

    a, m_state = states(), states()
    b = {k: v.clone() for k, v in a.items()}
    old(a, m_state, 0.9)
    new(b, m_state, 0.9)
    _same(list(a.values()), list(b.values()))
    [r] = foreach.candidates(FOREACH, line_of(FOREACH, "p.sub_("))
    assert "torch._foreach_sub_(p_list, [p.grad for p in p_list], alpha=lr)" in r.new_source
    _idempotent(foreach, r.new_source, line_of(r.new_source, "_foreach_sub_"))
    old, new = _pair(FOREACH, r, "sgd")
    ps = [torch.randn(*sh, generator=gen).requires_grad_() for sh in shapes]
    for p in ps:
        p.grad = torch.randn_like(p)
    qs = [p.detach().clone() for p in ps]
    for p, q in zip(ps, qs):
        q.grad = p.grad
    with torch.no_grad():
        old(ps, 0.1)
        new(qs, 0.1)
    _same([p.detach() for p in ps], qs)


def test_scalar_reads_through_a_one_step_alias():
    src = '''import torch


def draw(heat, labels, n):
    labels = labels.long()
    for k in range(n):
        cls = labels[k]
        heat[cls] += 1
    return heat
'''
    [r] = scalar_reads.candidates(src, line_of(src, "heat[cls] += 1"))
    assert "cls = labels_host[k]" in r.new_source and r.auto_applicable
    old, new = _pair(src, r, "draw")
    labels = torch.tensor([2, 0, 2, 1])
    _same(old(torch.zeros(3, 2), labels, 4), new(torch.zeros(3, 2), labels, 4))


GUARDED = '''import torch


def scatter_max(src, index, dim_size):
    out = src.new_zeros((dim_size,) + src.shape[1:])
    for i in range(dim_size):
        sel = index == i
        if sel.any():
            out[i] = src[sel].max(0).values
    return out


def class_means(x, labels, n):
    out = torch.full((n, x.shape[1]), -1.0, dtype=x.dtype)
    for c in range(n):
        rows = labels == c
        if rows.sum() == 0:
            continue
        out[c] = x[rows].mean(0)
    return out


def present_sums(x, labels, n):
    sums = []
    for c in range(n):
        if len(x[labels == c]) > 0:
            sums.append(x[labels == c].sum(0))
    return torch.stack(sums)


def not_a_guard(x, labels, n):
    out = torch.zeros(n, x.shape[1])
    for c in range(n):
        sel = labels == c
        if sel.sum() > 2:
            out[c] = x[sel].sum(0)
    return out


def alias_read_after(x, labels, n):
    out = torch.zeros(n, x.shape[1])
    for c in range(n):
        sel = labels == c
        out[c] = x[sel].sum(0)
    return out, sel
'''


@pytest.mark.parametrize("rows", [0, 1, 13])
def test_segment_groups_behind_a_mask_alias_and_an_emptiness_guard(rows):
    gen = torch.Generator().manual_seed(rows + 3)
    x = torch.randn(3, rows, generator=gen).t()                           # non-contiguous (rows, 3)
    labels = torch.randint(-1, 7, (rows,), generator=gen)                 # -1 and 6: outside range(6)
    cases = [("scatter_max", ".max(0).values", (x, labels, 6)), ("class_means", ".mean(0)", (x, labels, 6))]
    if rows:                                                              # torch.stack([]) raises in the loop
        cases.append(("present_sums", "sums.append", (x, labels.clamp(min=0), 6)))
    for name, needle, args in cases:
        r = segments.candidates(GUARDED, line_of(GUARDED, needle))[-1]
        body = r.new_source.split(f"def {name}")[1].split("return")[0]
        assert "for " not in body and "torch.bincount" in body, body
        assert not r.auto_applicable and r.applicable_when_verified and r.needs_verification
        assert "an empty group keeps its value, as in the loop" in r.constraints
        old, new = _pair(GUARDED, r, name)
        _same(old(*args), new(*args))
        _idempotent(segments, r.new_source, line_of(r.new_source, f"def {name}") + 2)
    for needle in ("sel.sum() > 2", "return out, sel"):
        assert segments.candidates(GUARDED, line_of(GUARDED, needle) - 1) == [], needle


SKIPS = '''import torch


def present_class_scores(probs, labels, num_classes):
    scores = []
    for c in range(num_classes):
        fg = (labels == c).float()
        if fg.sum() == 0:
            continue
        err = (fg - probs[:, c]).abs()
        scores.append((err.sort(0, descending=True)[0] * torch.linspace(1, 0, err.shape[0])).sum())
    return torch.stack(scores).mean()


def kept_rows(x, limit):
    out = []
    for row in x:
        if row.max() > limit: continue
        out.append(row * 2)
    return out


def two_skips(x):
    out = []
    for row in x:
        if row.sum() > 0:
            continue
        if row.sum() < -1:
            continue
        out.append(row)
    return torch.stack(out)
'''


@pytest.mark.parametrize("rows", [1, 12])
def test_map_vmap_drops_the_iterations_a_loop_skips(rows):
    gen = torch.Generator().manual_seed(rows)
    probs = torch.rand(5, rows, generator=gen).t().requires_grad_()          # non-contiguous (rows, 5)
    labels = torch.randint(0, 3, (rows,), generator=gen)                      # classes 3 and 4 absent: skipped
    [r] = map_loops.candidates(SKIPS, line_of(SKIPS, "fg = (labels == c)"))
    assert r.generator == "map_vmap" and not r.auto_applicable and r.applicable_when_verified
    assert "scores = rows[torch.logical_not(dropped)]" in r.new_source and "continue" not in r.new_source.split("def kept")[0]
    assert any("skip condition" in n for n in r.needs_verification)
    old, new = _pair(SKIPS, r, "present_class_scores")
    a, b = old(probs, labels, 5), new(probs, labels, 5)
    _same(a, b)
    _same(torch.autograd.grad(a, probs)[0], torch.autograd.grad(b, probs)[0])
    _idempotent(map_loops, r.new_source, line_of(r.new_source, "def present_class_scores") + 2)
    [r] = map_loops.candidates(SKIPS, line_of(SKIPS, "out.append(row * 2)"))     # collected into a list: extended
    assert "out.extend(" in r.new_source
    old, new = _pair(SKIPS, r, "kept_rows")
    x = torch.randn(rows, 3, generator=gen)
    _same(old(x, 0.5), new(x, 0.5))
    assert map_loops.candidates(SKIPS, line_of(SKIPS, "if row.sum() < -1")) == []      # two skips: left alone


TWO_LISTS = '''import torch


def warp(points, velocity, deltas, proj, frames):
    uvs, valids = [], []
    for t in range(frames):
        pts = points - velocity * deltas[:, t, None, None]
        cam = torch.einsum("bij,bnj->bni", proj[:, t], pts)
        depth = cam[..., 2:3]
        uvs.append(cam[..., :2] / depth.clamp(min=1e-5))
        valids.append(depth[..., 0] > 0.1)
    return torch.stack(uvs, 1), torch.stack(valids, 1)


def reads_own_list(x):
    a, b = [], []
    for row in x:
        a.append(row * 2)
        b.append(a[-1] + row)
    return torch.stack(a), torch.stack(b)


def same_list_twice(x):
    a = []
    for row in x:
        a.append(row * 2)
        a.append(row)
    return torch.stack(a)
'''


@pytest.mark.parametrize("frames", [1, 4])
@pytest.mark.parametrize("contiguous", [True, False])
def test_map_vmap_returns_one_result_per_appended_list(frames, contiguous):
    # two lists appended per iteration: one vmap returning both, each list extended with its rows
    [r] = [c for c in map_loops.candidates(TWO_LISTS, line_of(TWO_LISTS, "for t in range(frames)")) if c.generator == "map_vmap"]
    assert "uvs.extend(" in r.new_source and "valids.extend(" in r.new_source and "for t in" not in r.new_source
    old, new = _pair(TWO_LISTS, r, "warp")
    gen = torch.Generator().manual_seed(frames)
    points = torch.randn(2, 5, 3, generator=gen)
    velocity = torch.randn(2, 5, 3, generator=gen)
    deltas = torch.rand(2, frames, generator=gen)
    proj = torch.randn(2, frames, 3, 3, generator=gen)
    if not contiguous:
        proj = proj.transpose(-1, -2)
    _same(old(points, velocity, deltas, proj, frames), new(points, velocity, deltas, proj, frames))
    _idempotent(map_loops, r.new_source, line_of(r.new_source, "return torch.stack(uvs, 1)"))
    # a list read inside the iteration (a carried value), or one list appended twice: left alone
    assert map_loops.candidates(TWO_LISTS, line_of(TWO_LISTS, "b.append(a[-1] + row)") - 2) == []
    assert map_loops.candidates(TWO_LISTS, line_of(TWO_LISTS, "a.append(row)") - 2) == []
