"""Pure-PyTorch references of NPU-only APIs, by their documented semantics (../shared/docs/REFERENCE.md).

A rewrite whose new code calls torch_npu / mx_driving cannot run off an NPU. Where the replacement op's
semantics are well defined, the verification run calls the reference below in its place, so what is
checked on the user's tensors is everything the rewrite itself decides: which arguments it passes, how
it derives the ones the original did not have (MSDA's `level_start_index`), and that the op computes
what the replaced code computed. The NPU kernel's own numerics and speed are not checked here, which the
report says. The fused optimizers (torch_npu.optim.NpuFused*) are the torch optimizers of the same update
rule with the fused classes' documented signatures and defaults (catalog `optimizers`). An API without an
entry is "not verifiable on this machine".
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


def fused_optimizer(opt):
    """torch_npu.optim.NpuFused<X>: the update of torch.optim.<X>, with the fused class's documented signature
    and defaults (catalog `optimizers`), so a rewrite that passes an argument in the wrong place or relies
    on a default the fused class does not share builds a different optimizer."""
    import importlib

    module, name = opt.torch.rsplit(".", 1)
    torch_class = getattr(importlib.import_module(module), name)

    def build(*args, **kwargs):
        if len(args) > len(opt.signature):
            raise TypeError(f"{opt.replacement} takes at most {len(opt.signature)} positional arguments ({len(args)} given)")
        bound = dict(zip(opt.signature, args))
        for k, v in kwargs.items():
            if k not in opt.signature:
                raise TypeError(f"{opt.replacement} got an unexpected keyword argument {k!r}")
            if k in bound:
                raise TypeError(f"{opt.replacement} got multiple values for argument {k!r}")
            bound[k] = v
        for k, v in opt.defaults.items():
            bound.setdefault(k, tuple(v) if isinstance(v, list) else v)
        return torch_class(**bound)

    build.__name__ = opt.replacement.rsplit(".", 1)[-1]
    return build


def _references() -> dict:
    from npu_advise.recommendations.catalog import load

    found = {"mx_driving.npu_add_relu": npu_add_relu,
             "mx_driving.multi_scale_deformable_attn": multi_scale_deformable_attn}
    for opt in load().optimizers.values():
        found[opt.replacement] = fused_optimizer(opt)
    return found


# Dotted API name -> reference. Only ops with well-defined semantics belong here.
REFERENCES = _references()


def shims(names: list, on_call=None) -> dict:
    """Top-level package name -> namespace with the references of `names` at their dotted paths; `on_call()`
    runs at every call of one of them (a rewrite whose reference never ran was not checked by the run)."""
    import functools
    import types

    roots = {}
    for name in names:
        parts = name.split(".")
        node = roots.setdefault(parts[0], types.SimpleNamespace())
        for p in parts[1:-1]:
            if not hasattr(node, p):
                setattr(node, p, types.SimpleNamespace())
            node = getattr(node, p)
        ref = REFERENCES[name]
        if on_call is not None:
            ref = _counted(ref, on_call, functools)
        setattr(node, parts[-1], ref)
    return roots


def _counted(ref, on_call, functools):
    @functools.wraps(ref)
    def counted(*args, **kwargs):
        on_call()
        return ref(*args, **kwargs)
    return counted
