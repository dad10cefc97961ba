"""Fused-op opportunities found by what the code computes (recommendations/structure.py), not by names:
each shape is matched when complete and left alone when a part is missing; through the real `check` CLI,
and with constraint checks against the shapes a real profile records."""
from __future__ import annotations

import json
import textwrap

import pytest

from conftest import REPO, run_cli

MSDA_RENAMED = '''\
import torch
import torch.nn.functional as F


def sample_levels(value, shapes, locations, weights):
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


def warp_frames(frames, flows):
    """Not MSDA: one grid_sample per frame, concatenated, no weighted sum."""
    out = []
    for f, g in zip(frames, flows):
        out.append(F.grid_sample(f, g, align_corners=False))
    return torch.cat(out, 1)


def pyramid_conv(feats, convs):
    """Not anything: one conv per FPN level."""
    return [conv(f) for conv, f in zip(convs, feats)]
'''

AGGREGATION = '''\
import torch
import torch.nn.functional as F


def aggregate(feature_maps, grid, weights, cams):
    out = 0
    for cam in range(cams):
        for lvl, feat in enumerate(feature_maps):
            sampled = F.grid_sample(feat[:, cam], grid[:, cam], align_corners=False)
            out = out + (sampled * weights[:, cam, lvl]).sum(-1)
    return out
'''

VOXEL_POOL = '''\
import torch


def voxel_pooling(geom, feats, nx):
    ranks = geom[:, 0] * (nx[1] * nx[2] * nx[3]) + geom[:, 1] * (nx[2] * nx[3]) + geom[:, 2] * nx[3] + geom[:, 3]
    order = ranks.argsort()
    feats, geom, ranks = feats[order], geom[order], ranks[order]
    feats = feats.cumsum(0)
    keep = torch.ones_like(ranks, dtype=torch.bool)
    keep[:-1] = ranks[1:] != ranks[:-1]
    feats, geom = feats[keep], geom[keep]
    feats = torch.cat((feats[:1], feats[1:] - feats[:-1]))
    final = feats.new_zeros(int(nx[0]), feats.shape[1], int(nx[3]), int(nx[2]), int(nx[1]))
    final[geom[:, 0], :, geom[:, 3], geom[:, 2], geom[:, 1]] = feats
    return final


def top_scores(scores):
    """Not voxel pooling: a sort alone."""
    order = scores.argsort(descending=True)
    return scores[order][:10]
'''

GROUPS_AND_BOXES = '''\
import torch


def pool_groups(feats, ids):
    groups = torch.unique(ids)
    pooled = []
    for g in groups:
        pooled.append(feats[ids == g].mean(0))
    return torch.stack(pooled)


def count_groups(ids):
    """Not a segment reduction: a count per id, no reduction of features."""
    return [int(i) for i in torch.unique(ids)]


def points_in_boxes(points, boxes):
    masks = []
    for box in boxes:
        local = points - box[:3]
        masks.append((local.abs() <= box[3:6] / 2).all(-1))
    return torch.stack(masks)


def greedy_nms(boxes, scores, thr):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(i)
        ious = box_iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][ious <= thr]
    return keep


def top_k(scores, k):
    """Not NMS: a sort and a slice, no refiltering loop."""
    order = scores.argsort(descending=True)
    return [order[i] for i in range(k)]


def clip_boxes(boxes, limit):
    """Not points in boxes: a clamp per box, no containment test."""
    return [b.clamp(-limit, limit) for b in boxes]


def targets(boxes, heatmap):
    for k in range(len(boxes)):
        radius = gaussian_radius(boxes[k, 3:5])
        draw_heatmap_gaussian(heatmap, boxes[k, :2], radius)
    return heatmap


def augment(images, sigmas):
    """Not gaussian targets: a blur per sigma."""
    return [gaussian_blur(images, s) for s in sigmas]
'''


def _check(tmp_path, name, source) -> list:
    (tmp_path / name).write_text(textwrap.dedent(source), encoding="utf-8")
    r = run_cli("check", "--format", "json", "--no-cache", "--select", "NPA8", "--fail-on", "none", name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return [(f["rule"], f["locations"][0]["line"], f["locations"][0]["function"], f["details"].get("replacement"))
            for f in json.loads(r.stdout)["findings"]]


def _line(source: str, text: str) -> int:
    return next(i for i, l in enumerate(source.splitlines(), 1) if l.strip().startswith(text))


def test_msda_under_another_name_found_by_shape(tmp_path):
    assert _check(tmp_path, "attn.py", MSDA_RENAMED) == [
        ("NPA801", _line(MSDA_RENAMED, "for lvl, (h, w)"), "sample_levels", "mx_driving.multi_scale_deformable_attn")]


def test_cameras_by_levels_sampling_is_deformable_aggregation(tmp_path):
    assert _check(tmp_path, "agg.py", AGGREGATION) == [
        ("NPA810", _line(AGGREGATION, "for cam in"), "aggregate", "mx_driving.deformable_aggregation")]


def test_hand_written_voxel_pooling(tmp_path):
    assert _check(tmp_path, "pool.py", VOXEL_POOL) == [
        ("NPA802", _line(VOXEL_POOL, "order = ranks.argsort()"), "voxel_pooling", "mx_driving.bev_pool_v3")]


def test_group_loops_points_in_boxes_and_gaussian_targets(tmp_path):
    assert _check(tmp_path, "ops.py", GROUPS_AND_BOXES) == [
        ("NPA808", _line(GROUPS_AND_BOXES, "for g in groups"), "pool_groups", "mx_driving.scatter_mean"),
        ("NPA811", _line(GROUPS_AND_BOXES, "for box in boxes"), "points_in_boxes", "mx_driving.points_in_box"),
        ("NPA815", _line(GROUPS_AND_BOXES, "while order.numel()"), "greedy_nms", "mx_driving.nms3d"),
        ("NPA807", _line(GROUPS_AND_BOXES, "for k in range"), "targets", "mx_driving.npu_gaussian")]


FURTHEST_POINTS = '''\
import torch


def fps_where(xyz, npoint):
    bs, n, _ = xyz.shape
    dist = xyz.new_full((bs, n), 1e10)
    far = torch.zeros(bs, dtype=torch.long)
    picked = []
    batch = torch.arange(bs)
    for _ in range(npoint):
        picked.append(far)
        d = ((xyz - xyz[batch, far][:, None]) ** 2).sum(-1)
        dist = torch.where(d < dist, d, dist)
        far = torch.argmax(dist, dim=1)
    return torch.stack(picked, 1)


def fps_masked(xyz, npoint):
    centroids = torch.zeros(xyz.shape[0], npoint, dtype=torch.long)
    distance = torch.ones(xyz.shape[:2]) * 1e10
    farthest = torch.randint(0, xyz.shape[1], (xyz.shape[0],))
    i = 0
    while i < npoint:
        centroids[:, i] = farthest
        centroid = xyz[torch.arange(xyz.shape[0]), farthest, :].view(-1, 1, 3)
        dist = torch.sum((xyz - centroid) ** 2, -1)
        mask = dist < distance
        distance[mask] = dist[mask]
        farthest = torch.max(distance, -1)[1]
        i += 1
    return centroids


def fps_tuple(xyz, npoint):
    dist, far, out = xyz.new_full(xyz.shape[:2], 1e10), xyz.new_zeros(xyz.shape[0], dtype=torch.long), []
    for _ in range(npoint):
        out.append(far)
        dist = torch.min(dist, torch.cdist(xyz, xyz[torch.arange(len(xyz)), far][:, None]).squeeze(-1))
        _, far = dist.max(-1)
    return out


def nearest_center(points, centers):
    """Not FPS: a running minimum over centers, then one argmax outside the loop."""
    best = points.new_full(points.shape[:1], 1e10)
    for c in centers:
        best = torch.minimum(best, (points - c).norm(dim=-1))
    return best.argmax()


def decode(logits, steps):
    """Not FPS: greedy argmax decoding, no running minimum."""
    tok, out = logits[:, 0].argmax(-1), []
    for t in range(steps):
        out.append(tok)
        tok = (logits[:, t] + out[-1][:, None]).argmax(-1)
    return out


def clamp_scores(scores, ceiling, k):
    """Not FPS: a running minimum whose argmax is taken but never read again by the loop."""
    for _ in range(k):
        scores = torch.min(scores, ceiling)
        top = scores.argmax()
    return scores, top
'''


def test_furthest_point_sampling_in_its_spellings(tmp_path):
    """torch.where / masked write / torch.min running distances, argmax / max(...)[1] / `_, far = max`, for and
    while; a running minimum with no argmax read by the loop, and argmax decoding, are not FPS."""
    assert _check(tmp_path, "fps.py", FURTHEST_POINTS) == [
        ("NPA819", _line(FURTHEST_POINTS, "for _ in range(npoint):"), "fps_where", "mx_driving.furthest_point_sampling"),
        ("NPA819", _line(FURTHEST_POINTS, "while i < npoint"), "fps_masked", "mx_driving.furthest_point_sampling"),
        ("NPA819", next(i for i, l in enumerate(FURTHEST_POINTS.splitlines(), 1) if "for _ in range(npoint)" in l
                        and i > _line(FURTHEST_POINTS, "def fps_tuple")), "fps_tuple",
         "mx_driving.furthest_point_sampling")]
    r = run_cli("rules", "NPA819")
    assert r.returncode == 0 and "furthest_point_sampling" in r.stdout and "sequential" in r.stdout


WRITTEN_OUT_TARGETS = '''\
import numpy as np
import torch


def render_heatmap(centers, sigmas, h, w):
    ys = torch.arange(h, dtype=centers.dtype).view(h, 1)
    xs = torch.arange(w, dtype=centers.dtype).view(1, w)
    heat = centers.new_zeros(h, w)
    for k in range(centers.shape[0]):
        blob = torch.exp(-((xs - centers[k, 0]) ** 2 + (ys - centers[k, 1]) ** 2) / (2 * sigmas[k] ** 2))
        heat = torch.maximum(heat, blob * 0.9)
    return heat


def render_heatmap_np(centers, sigma, h, w):
    """Not device work: numpy targets of a data pipeline."""
    ys, xs = np.mgrid[0:h, 0:w]
    heat = np.zeros((h, w))
    for cx, cy in centers:
        heat = np.maximum(heat, np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2)))
    return heat


def mixture_density(x, means, sigmas):
    """Not a heatmap: gaussians over a grid summed into a density, no element-wise max."""
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    total = 0
    for m, s in zip(means, sigmas):
        total = total + torch.exp(-((xs - m[0]) ** 2 + (ys - m[1]) ** 2) / (2 * s ** 2))
    return total.max()


def best_mode(x, means, sigmas):
    """Not a heatmap: the likelihood of points under each mode, max-merged, over no pixel grid."""
    best = torch.zeros(x.shape[0])
    for m, s in zip(means, sigmas):
        best = torch.maximum(best, torch.exp(-((x[:, 0] - m[0]) ** 2 + (x[:, 1] - m[1]) ** 2) / (2 * s ** 2)))
    return best


def pillar_max(feats, idx, n):
    out = feats.new_full((n, feats.shape[1]), -1e4)
    return out.index_reduce(0, idx, feats, "amax", include_self=True)


def pillar_mean(feats, idx, n):
    return feats.new_zeros(n, feats.shape[1]).scatter_reduce(0, idx[:, None].expand_as(feats), feats, reduce="mean")


def column_max(feats, idx, n):
    """Not scatter_max: amax along dim 1 (scatter_max reduces dim 0 only)."""
    return feats.new_zeros(feats.shape[0], n).index_reduce(1, idx, feats, "amax")


def products(feats, idx, n):
    """No mx_driving op reduces a product."""
    return feats.new_ones(n, feats.shape[1]).index_reduce(0, idx, feats, "prod")
'''


def test_written_out_gaussian_heatmap_and_reductions_by_index(tmp_path):
    """A gaussian over a pixel grid computed on the device and max-merged per object (no draw_*gaussian*
    helper), and index_reduce / scatter_reduce by group; numpy gaussians, sums without a max, a max over
    point likelihoods (no grid), dim-1 amax and prod are not."""
    assert _check(tmp_path, "targets.py", WRITTEN_OUT_TARGETS) == [
        ("NPA807", _line(WRITTEN_OUT_TARGETS, "for k in range"), "render_heatmap", "mx_driving.npu_draw_gaussian_to_heatmap"),
        ("NPA808", _line(WRITTEN_OUT_TARGETS, 'return out.index_reduce(0'), "pillar_max", "mx_driving.scatter_max"),
        ("NPA808", _line(WRITTEN_OUT_TARGETS, "return feats.new_zeros(n, "), "pillar_mean", "mx_driving.scatter_mean")]
    r = run_cli("rules", "NPA807")
    assert r.returncode == 0 and "merges it into the heatmap with an element-wise max" in r.stdout
    assert "npu_draw_gaussian_to_heatmap" in r.stdout
    r = run_cli("rules", "NPA808")
    assert r.returncode == 0 and "index_reduce" in r.stdout and "reduce='amax' (along dim 0)" in r.stdout


def test_corpus_loops_found_by_what_they_compute():
    """Two corpus scripts through `check`: the per-object-slot gaussian rendering of registry_det (helpers of
    no telling name) and the pillar max of radar_fusion (index_reduce amax in the pure-PyTorch arm of an
    is_cuda dispatch, whose NPA907 names the op the compiled extension is replaced by)."""
    corpus = REPO / "tests" / "corpus"
    r = run_cli("check", "--format", "json", "--no-cache", "--fail-on", "none", ".", cwd=corpus / "registry_det")
    found = json.loads(r.stdout)["findings"]
    (gauss,) = [f for f in found if f["rule"] == "NPA807"]
    assert gauss["locations"][0]["file"] == "models.py" and gauss["locations"][0]["function"] == "render_targets"
    assert gauss["details"]["replacement"] == "mx_driving.npu_draw_gaussian_to_heatmap"
    r = run_cli("check", "--format", "json", "--no-cache", "--fail-on", "none", ".", cwd=corpus / "radar_fusion")
    found = {f["rule"]: f for f in json.loads(r.stdout)["findings"] if f["locations"][0]["file"] == "pillar_ops.py"}
    assert found["NPA808"]["details"]["replacement"] == "mx_driving.scatter_max"
    assert found["NPA808"]["details"]["dispatch_line"] == found["NPA907"]["locations"][0]["line"]
    assert found["NPA907"]["details"]["extension_replaced_by"] == "mx_driving.scatter_max"
    assert "mx_driving.scatter_max replaces the extension" in found["NPA907"]["title"]
    assert found["NPA908"]["details"]["ops"] == ["pillar_scatter_max_cuda"]
    assert found["NPA908"]["details"]["replacements"] == ["mx_driving.scatter_max"]
    r = run_cli("check", "--format", "json", "--no-cache", "--fail-on", "none", ".", cwd=corpus / "clean_centernet")
    assert all(f["rule"] != "NPA807" for f in json.loads(r.stdout)["findings"])   # its numpy gaussian loop: a trap


def test_structural_msda_checks_constraints_against_recorded_shapes(tmp_path):
    """A real profile of a script calling the renamed MSDA with 16 heads: the finding says the kernel's head
    limit fails, with the shape it was read from."""
    (tmp_path / "attn.py").write_text(MSDA_RENAMED, encoding="utf-8")
    (tmp_path / "train.py").write_text(textwrap.dedent('''\
        import torch
        from attn import sample_levels

        torch.manual_seed(0)
        shapes = [(8, 8), (4, 4)]
        proj = torch.nn.Linear(8, 8)
        opt = torch.optim.SGD(proj.parameters(), lr=0.1)
        for step in range(6):
            value = proj(torch.randn(1, 80, 16, 8))
            loc = torch.rand(1, 5, 16, 2, 3, 2)
            w = torch.rand(1, 5, 16, 2, 3).softmax(-1)
            loss = sample_levels(value, shapes, loc, w).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            print("loss", float(loss))
        '''), encoding="utf-8")
    r = run_cli("profile", "--out", tmp_path / "out", "train.py", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    found = [f for f in json.loads((tmp_path / "out" / "findings.json").read_text())["findings"] if f["rule"] == "NPA801"]
    assert len(found) == 1
    f = found[0]
    assert f["locations"][0]["file"] == "attn.py" and f["locations"][0]["line"] == _line(MSDA_RENAMED, "for lvl, (h, w)")
    assert f["details"]["constraint_violations"] == [
        "num_heads = 16 (limit 8; recorded shapes: sampling_locations [1, 5, 16, 2, 3, 2], value [1, 80, 16, 8])"]
    assert "a constraint fails: num_heads = 16" in f["title"]
    assert any(c.startswith("verified: num_levels * num_points = 6 (limit 64") for c in f["fix"]["constraints"])
    assert f["evidence"] and f["evidence"][0]["unit"] == "us/step" and f["evidence"][0]["value"] > 0


TRANSFORMER = '''\
import torch
import torch.nn as nn


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, cos, sin):
    return q * cos + rotate_half(q) * sin


class RMSNorm(nn.Module):
    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def forward(self, q, k, v, mask):
        scores = (q @ k.transpose(-2, -1)) * self.scale
        scores = scores.masked_fill(mask, float("-inf"))
        probs = self.drop(scores.softmax(dim=-1))
        return probs @ v


def not_attention(a, b, c):
    """Two matmuls and no softmax between them."""
    return (a @ b.transpose(-2, -1)) @ c


def layer_norm_like(x):
    """Not RMSNorm: the variance after subtracting the mean, no rsqrt of a mean square."""
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / (x.std(-1, keepdim=True) + 1e-5)
'''


def test_transformer_blocks_map_to_torch_npu_fused_ops(tmp_path):
    assert _check(tmp_path, "blocks.py", TRANSFORMER) == [
        ("NPA813", _line(TRANSFORMER, "return q * cos"), "apply_rotary", "torch_npu.npu_rotary_mul"),
        ("NPA812", _line(TRANSFORMER, "return self.weight * (x * torch.rsqrt"), "forward", "torch_npu.npu_rms_norm"),
        ("NPA814", _line(TRANSFORMER, "scores = (q @ k.transpose"), "forward", "torch_npu.npu_fusion_attention")]


VOXELIZATION = '''\
import torch
from mmcv.ops import Voxelization
import mmdet3d.ops as ops3d
from mmcv.ops import voxelization as hard_voxelize


class PointsToVoxels(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.vox = Voxelization([0.1, 0.1, 0.2], [0, -40, -3, 70.4, 40, 1], 32, (16000, 40000))
        self.vox3d = ops3d.Voxelization([0.2, 0.2, 8], [0, -40, -3, 70.4, 40, 1], 20, 12000)

    def forward(self, points):
        return hard_voxelize(points, [0.1, 0.1, 0.2], [0, -40, -3, 70.4, 40, 1], 32, 16000)
'''

VOXELIZATION_TRAPS = '''\
import torch
from mx_driving import Voxelization as NpuVoxelization


class Voxelization(torch.nn.Module):
    """The project's own module of the same name: not mmcv's extension."""


def voxelization(points, size):
    return torch.div(points[:, :3], size, rounding_mode="floor")


a = Voxelization()
b = voxelization(torch.zeros(4, 3), 0.1)
c = NpuVoxelization([0.1] * 3, [0] * 6, 10, 100)
'''


def test_mmcv_and_mmdet3d_voxelization_by_qualified_name(tmp_path):
    assert _check(tmp_path, "vox.py", VOXELIZATION) == [
        ("NPA816", _line(VOXELIZATION, "self.vox = "), "__init__", "mx_driving.Voxelization"),
        ("NPA816", _line(VOXELIZATION, "self.vox3d = "), "__init__", "mx_driving.Voxelization"),
        ("NPA816", _line(VOXELIZATION, "return hard_voxelize"), "forward", "mx_driving.Voxelization")]
    assert _check(tmp_path, "own.py", VOXELIZATION_TRAPS) == []


MMCV_OPS = '''\
import torch
import mmcv.ops as ops
from mmcv.ops import box_iou_rotated, nms_bev
from mmcv.ops import SigmoidFocalLoss

try:
    from mmcv.ops import sigmoid_focal_loss as focal_cuda
except ImportError:
    focal_cuda = None


def match(boxes, gt, scores):
    iou = box_iou_rotated(boxes, gt)
    keep = nms_bev(boxes, scores, 0.5)
    near = ops.knn(4, boxes[None, :, :3], gt[None, :, :3])
    return iou, keep, near


def loss(pred, target):
    if pred.is_cuda:
        return focal_cuda(pred, target, 2.0, 0.25, None, "none")
    return SigmoidFocalLoss(2.0, 0.25)(pred, target)
'''

MMCV_OPS_TRAPS = '''\
import torch
from mmcv.ops import nms, batched_nms            # 2-D image NMS: no same-named mx_driving op
from mx_driving import box_iou_rotated


def knn(k, a, b):
    return torch.cdist(a, b).topk(k, largest=False).indices


def f(a, b, s):
    return box_iou_rotated(a, b), knn(1, a, b), nms(a, s, 0.5), batched_nms(a, s, s.long(), {})
'''


def test_mmcv_cuda_ops_with_a_same_named_mx_driving_op(tmp_path):
    assert _check(tmp_path, "m.py", MMCV_OPS) == [
        ("NPA818", _line(MMCV_OPS, "iou = "), "match", "mx_driving.box_iou_rotated"),
        ("NPA818", _line(MMCV_OPS, "keep = "), "match", "mx_driving.nms3d"),
        ("NPA818", _line(MMCV_OPS, "near = "), "match", "mx_driving.knn"),
        ("NPA818", _line(MMCV_OPS, 'return focal_cuda('), "loss", "mx_driving.sigmoid_focal_loss"),
        ("NPA818", _line(MMCV_OPS, "return SigmoidFocalLoss("), "loss", "mx_driving.sigmoid_focal_loss")]
    assert _check(tmp_path, "traps.py", MMCV_OPS_TRAPS) == []


PROJECTION_TRAIN = '''\
import torch

torch.manual_seed(0)
head = torch.nn.Linear(4, 4)
opt = torch.optim.SGD(head.parameters(), lr=0.01)


def project(points, lidar2img):
    pts = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    return torch.matmul(lidar2img[:, :, None], pts[:, None, ..., None]).squeeze(-1)


def not_projections(m):
    a = torch.matmul(m, m)                                              # 4x4 @ 4x4: no vector
    b = torch.matmul(m[0, 0], torch.rand(100, 4, 1))                    # 3-D: below the kernel's 4 dims
    c = torch.matmul(torch.rand(2, 3, 5, 5), torch.rand(2, 3, 5, 1))    # a 5x5 matrix
    return a.sum() + b.sum() + c.sum()


for step in range(6):
    points = head(torch.randn(2, 100, 4))[..., :3]
    lidar2img = torch.rand(2, 6, 4, 4)
    loss = project(points, lidar2img).square().mean() + not_projections(lidar2img)
    opt.zero_grad()
    loss.backward()
    opt.step()
'''


def test_small_batch_matmul_found_from_recorded_shapes(tmp_path):
    """A real profile: the 4x4 @ 4x1 projection (6-D, broadcast) is NPA817 with the shapes it was read from; the
    4x4 @ 4x4, the 3-D and the 5x5 matmuls are not."""
    (tmp_path / "train.py").write_text(PROJECTION_TRAIN, encoding="utf-8")
    r = run_cli("profile", "--out", tmp_path / "out", "train.py", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    found = [f for f in json.loads((tmp_path / "out" / "findings.json").read_text())["findings"] if f["rule"] == "NPA817"]
    assert [(f["locations"][0]["line"], f["locations"][0]["function"]) for f in found] == [
        (_line(PROJECTION_TRAIN, "return torch.matmul(lidar2img"), "project")]
    f = found[0]
    assert f["details"]["replacement"] == "mx_driving.npu_batch_matmul"
    assert f["details"]["shapes"] == [[[2, 6, 1, 4, 4], [2, 1, 100, 4, 1]]]
    assert any(c.startswith("verified: operands 4-6-D") and "[2, 6, 1, 4, 4] @ [2, 1, 100, 4, 1]" in c
               for c in f["fix"]["constraints"])
    assert f["evidence"] and f["evidence"][0]["unit"] == "us/step" and f["evidence"][0]["value"] > 0


# DrivingSDK's migrated models (../shared/docs/data/drivingsdk_models_optimizations.txt): each fused op by the names the
# file gives it, and the rule that finds the code it replaces (one rule per op family: aliases share it).
FUSED_OP_RULE = {
    "npu_fusion_attention": "NPA814", "npu_rms_norm": "NPA812", "npu_rotary_mul": "NPA813", "batch_matmul": "NPA817",
    "multi_scale_deformable_attn": "NPA801", "msda": "NPA801", "npu_multi_scale_deformable_attn_function": "NPA801",
    "scatter_max": "NPA808", "scatter_mean": "NPA808", "scatter_add": "NPA808",
    "bev_pool_v3": "NPA802", "bev_pool": "NPA802", "bev_pool_v2": "NPA802",
    "npu_deformable_conv2d": "NPA805", "npu_deformable_conv2dbk": "NPA805", "modulated_deform_conv2d": "NPA805",
    "ModulatedDeformConv2dFunction": "NPA805", "dc": "NPA805", "mdc": "NPA805",
    "resnet_add_relu": "NPA803", "npu_add_relu": "NPA803", "resnet_maxpool": "NPA804", "npu_max_pool2d": "NPA804",
    "spconv": "NPA806", "SparseConv3d": "NPA806", "SubMConv3d": "NPA806", "SparseConvTensor": "NPA806",
    "SparseSequential": "NPA806", "deformable_aggregation": "NPA810", "npu_deformable_aggregation": "NPA810",
    "npu_deformable_aggregation as DAF": "NPA810", "deformable_aggregation as deformable_aggregation_function": "NPA810",
    "points_in_boxes_all": "NPA811", "npu_points_in_box_all": "NPA811", "Voxelization": "NPA816",
    "npu_assign_target_of_single_head": "NPA807", "npu_gaussian": "NPA807",
    "NpuFusedAdamW": "NPA601", "NpuFusedAdam": "NPA601", "NpuFusedSGD": "NPA601",
}
# Named there but not fused ops: the patcher and its patch names (NPA901), launch and dataset code.
NOT_FUSED_OPS = {"patcher", "Patch", "PatcherBuilder", "default_patcher_builder", "default_patcher", "with_imports",
                 "patch_mmcv_version", "numpy_type", "stream", "ddp", "index", "point", "_C", "fused", "dataset",
                 "preprocess"}
# Used by two or more of those models, no detector yet.
NOT_YET_DETECTED = {"NpuFusedMultiheadAttention", "NpuFusedTransformerEncoderLayer", "npu_index_select"}


def test_every_fused_op_two_migrated_models_use_has_a_documented_rule(shared_data):
    from npu_advise.rules import all_rules

    path = shared_data.parent / "docs" / "data" / "drivingsdk_models_optimizations.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    users: dict = {}           # an op family (its rule, or the name when none) -> the models using it
    for line in path.read_text(encoding="utf-8").splitlines():
        model, _, items = line.partition(":")
        for item in {i.strip() for i in items.split(",")}:
            if item and "=" not in item:
                users.setdefault(FUSED_OP_RULE.get(item, item), set()).add(model.strip())
    shared = {family for family, models in users.items() if len(models) >= 2}
    assert shared - set(FUSED_OP_RULE.values()) - NOT_FUSED_OPS - NOT_YET_DETECTED == set()
    detected = shared & set(FUSED_OP_RULE.values())
    assert len(detected) == 16 and len(shared & NOT_YET_DETECTED) == 3      # the counts the README states
    rules = all_rules()
    for code in detected:
        assert rules[code].detects and rules[code].why and rules[code].fix, code


BEV_SPLAT = '''\
import torch

try:
    from my_ops import bev_pool_forward
except ImportError:
    bev_pool_forward = None


def splat(volume, geom, b, z, y, x):
    flat = ((geom[:, 0] * z + geom[:, 1]) * y + geom[:, 2]) * x + geom[:, 3]
    out = volume.new_zeros(b * z * y * x, volume.shape[1])
    out.index_put_((flat,), volume, accumulate=True)
    return out.view(b, z, y, x, -1)


def splat_add(feats, bi, yi, xi, h, w):
    bev = feats.new_zeros(bi.shape[0] * h * w, feats.shape[1])
    return bev.index_add_(0, bi * h * w + yi * w + xi, feats)


def splat_scatter(feats, cell, bi, yi, xi, h, w):
    key = (bi * h * w + yi * w + xi).long()
    bev = feats.new_zeros(h * w * 2, feats.shape[1])
    return bev.scatter_add_(0, key[:, None].expand(-1, feats.shape[1]), feats)


def splat_tuple(bev, feats, b, y, x):
    return bev.index_put_((b, y, x), feats, accumulate=True)


class Lift:
    def forward(self, volume, geom):
        if bev_pool_forward is not None and volume.is_cuda:
            return bev_pool_forward(volume, geom)
        else:
            return splat(volume, geom, 1, 1, 8, 8)


def occupancy(bi, yi, xi, h, w):
    """Not pooling: a count per cell (a constant scattered)."""
    grid = torch.zeros(2 * h * w)
    return grid.index_add_(0, bi * h * w + yi * w + xi, torch.ones_like(xi, dtype=torch.float))


def per_class(loss, labels, n):
    """Not pooling: a sum per class label."""
    return loss.new_zeros(n).index_add_(0, labels, loss)


def masked(x, mask):
    """Not pooling: a masked write (no accumulation)."""
    return x.index_put_((mask,), torch.zeros(()))


def row_col(m, rows, cols, v):
    """Not pooling: a 2-D index (one stride) into a matrix."""
    return m.view(-1).index_add_(0, rows * m.shape[1] + cols, v)
'''


def test_bev_splat_by_a_linearized_cell_index(tmp_path):
    """Voxel pooling written as one accumulating scatter (index_put_ accumulate / index_add_ / scatter_add_ by a
    cell index over >= 3 coordinates, or a tuple of >= 3 index tensors) is bev_pool_v3; inside a dispatch's pure
    arm (a call of the function) it is tied to the dispatch and also located at the call; counts, per-class sums,
    masked writes and 2-D indices are not."""
    found = _check(tmp_path, "splat.py", BEV_SPLAT)
    assert found == [
        ("NPA802", _line(BEV_SPLAT, "out.index_put_((flat,)"), "splat", "mx_driving.bev_pool_v3"),
        ("NPA802", _line(BEV_SPLAT, "return bev.index_add_(0"), "splat_add", "mx_driving.bev_pool_v3"),
        ("NPA802", _line(BEV_SPLAT, "return bev.scatter_add_(0"), "splat_scatter", "mx_driving.bev_pool_v3"),
        ("NPA802", _line(BEV_SPLAT, "return bev.index_put_((b, y, x)"), "splat_tuple", "mx_driving.bev_pool_v3")]
    r = run_cli("check", "--format", "json", "--no-cache", "--fail-on", "none", "splat.py", cwd=tmp_path)
    (first,) = [f for f in json.loads(r.stdout)["findings"] if f["locations"][0]["function"] == "splat"]
    assert [l["line"] for l in first["locations"]] == [_line(BEV_SPLAT, "out.index_put_((flat,)"),
                                                       _line(BEV_SPLAT, "return splat(volume")]
    assert first["details"]["dispatch_line"] == _line(BEV_SPLAT, "if bev_pool_forward is not None")
    r = run_cli("rules", "NPA802")
    assert r.returncode == 0 and "linearized cell index" in r.stdout


ROTATED_IOU = '''\
import torch


def corners(boxes):
    """(N, 5) x y w l yaw -> (N, 4, 2) corners rotated by the yaw."""
    c, s = torch.cos(boxes[:, 4]), torch.sin(boxes[:, 4])
    dx = torch.stack([boxes[:, 2], -boxes[:, 2], -boxes[:, 2], boxes[:, 2]], 1) / 2
    dy = torch.stack([boxes[:, 3], boxes[:, 3], -boxes[:, 3], -boxes[:, 3]], 1) / 2
    x = boxes[:, None, 0] + dx * c[:, None] - dy * s[:, None]
    y = boxes[:, None, 1] + dx * s[:, None] + dy * c[:, None]
    return torch.stack([x, y], -1)


def polygon_area(poly):
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1).abs()


def bev_iou(a, b):
    inter = polygon_area(torch.minimum(corners(a)[:, None], corners(b)[None]))
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-6)


def axis_aligned_iou(a, b):
    """Not rotated: no cos/sin."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (a[:, 2:] - a[:, :2]).prod(-1)[:, None] + (b[:, 2:] - b[:, :2]).prod(-1)[None] - inter
    return inter / union


def rotated_box_area(boxes):
    """Rotated corners and a shoelace area, but no ratio: not an IoU."""
    return polygon_area(corners(boxes))
'''


def test_rotated_bev_iou_written_out_needs_rotation_area_and_ratio(tmp_path):
    assert _check(tmp_path, "iou.py", ROTATED_IOU) == [
        ("NPA820", _line(ROTATED_IOU, "def bev_iou"), "bev_iou", "mx_driving.boxes_iou_bev")]


VOXELS = '''\
import torch


def voxel_means(points, num_valid, pc_min, voxel_size):
    feats, cells = [], []
    for b in range(points.shape[0]):
        pts = points[b, : num_valid[b]]
        coords = ((pts[:, :3] - pc_min) / voxel_size).floor().long()
        uniq, inverse = torch.unique(coords, dim=0, return_inverse=True)
        sums = pts.new_zeros(uniq.shape[0], pts.shape[1]).index_add_(0, inverse, pts)
        counts = pts.new_zeros(uniq.shape[0]).index_add_(0, inverse, torch.ones_like(pts[:, 0]))
        feats.append(sums / counts[:, None])
        cells.append(uniq)
    return torch.cat(feats), torch.cat(cells)


def instance_means(feats, ids):
    """Not voxelization: a unique over ids, not over quantized coordinates."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    return feats.new_zeros(uniq.shape[0], feats.shape[1]).index_add_(0, inverse, feats)


def cell_of(points, pc_min, voxel_size):
    """Not voxelization: cells computed and deduplicated, nothing reduced by them."""
    coords = ((points[:, :3] - pc_min) / voxel_size).floor().long()
    return torch.unique(coords, dim=0)
'''


def test_dynamic_voxelization_written_out_per_sample(tmp_path):
    assert _check(tmp_path, "vox.py", VOXELS) == [
        ("NPA821", _line(VOXELS, "for b in range(points.shape[0])"), "voxel_means",
         "mx_driving.Voxelization(max_num_points=-1) + mx_driving.dynamic_scatter")]
    r = run_cli("rules", "NPA821")
    assert r.returncode == 0 and "dynamic_scatter" in r.stdout
