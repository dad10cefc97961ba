"""Pure-PyTorch references of NPU-only APIs, by their documented semantics (../shared/docs/REFERENCE.md).

A rewrite whose new code calls torch_npu / mx_driving cannot run off an NPU. Where the replacement op's
semantics are well defined, the verification run calls the reference below in its place, so what is
checked on the user's tensors is everything the rewrite itself decides: which arguments it passes, how
it derives the ones the original did not have (MSDA's `level_start_index`), and that the op computes
what the replaced code computed. The NPU kernel's own numerics and speed are not checked here, which the
report says. An API without an entry is "not verifiable on this machine".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def npu_add_relu(x, y):
    """mx_driving.npu_add_relu: relu(x + y) for same-shaped tensors (no broadcast)."""
    if x.shape != y.shape:
        raise ValueError(f"npu_add_relu needs same-shaped inputs (no broadcast), got {tuple(x.shape)} and {tuple(y.shape)}")
    return torch.relu(x + y)


def multi_scale_deformable_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """mx_driving.multi_scale_deformable_attn: bilinear sampling of each level's value map at the sampling
    locations ([0, 1] coordinates, zero padding, align_corners=False), weighted by the attention weights
    and summed over levels and points. value (bs, keys, heads, dims), each level starting at its
    `level_start_index` entry; sampling_locations (bs, queries, heads, levels, points, 2); attention_weights
    (bs, queries, heads, levels, points) -> (bs, queries, heads * dims)."""
    bs, keys, heads, dims = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    starts = [int(s) for s in level_start_index.tolist()]
    if len(starts) != levels or len(sizes) != levels:
        raise ValueError(f"level_start_index has {len(starts)} entries, spatial_shapes {len(sizes)}, "
                         f"sampling_locations {levels} levels")
    if starts[-1] + sizes[-1] > keys:
        raise IndexError(f"level_start_index {starts} with spatial_shapes {spatial_shapes.tolist()} reads past "
                         f"the {keys} keys of value")
    grids = sampling_locations * 2 - 1
    sampled = []
    for lvl, ((h, w), start, size) in enumerate(zip(spatial_shapes.tolist(), starts, sizes)):
        v = value[:, start:start + size].permute(0, 2, 3, 1).reshape(bs * heads, dims, int(h), int(w))
        g = grids[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(bs * heads, queries, points, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)          # (bs*heads, dims, queries, levels*points)
    w = attention_weights.permute(0, 2, 1, 3, 4).reshape(bs * heads, 1, queries, levels * points)
    out = (stacked * w).sum(-1).view(bs, heads * dims, queries)
    return out.transpose(1, 2).contiguous()


# Dotted API name -> reference. Only ops with well-defined semantics belong here.
REFERENCES = {
    "mx_driving.npu_add_relu": npu_add_relu,
    "mx_driving.multi_scale_deformable_attn": multi_scale_deformable_attn,
}


def shims(names: list) -> dict:
    """Top-level package name -> namespace with the references of `names` at their dotted paths."""
    import types

    roots = {}
    for name in names:
        parts = name.split(".")
        node = roots.setdefault(parts[0], types.SimpleNamespace())
        for p in parts[1:-1]:
            if not hasattr(node, p):
                setattr(node, p, types.SimpleNamespace())
            node = getattr(node, p)
        setattr(node, parts[-1], REFERENCES[name])
    return roots
