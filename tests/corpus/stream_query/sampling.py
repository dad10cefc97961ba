"""Deformable point sampling over a feature pyramid (pure PyTorch), with the compiled kernel when the
original CUDA extension is built."""
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from petr_ext import ms_deform_attn_forward as _ms_deform_attn_cuda  # gt: migration medium
except ImportError:
    _ms_deform_attn_cuda = None


def pyramid_point_sampling(value, level_shapes, sample_loc, attn_weight):
    """value (B, S, heads, C) with S = sum(h*w); sample_loc (B, Q, heads, L, P, 2) in [0, 1];
    attn_weight (B, Q, heads, L, P) -> (B, Q, heads*C)."""
    bs, _, heads, ch = value.shape
    _, nq, _, levels, points, _ = sample_loc.shape
    per_level = value.split([h * w for h, w in level_shapes], dim=1)
    grids = sample_loc * 2 - 1
    sampled = []
    for lvl, (h, w) in enumerate(level_shapes):  # gt: fused_op high msda; small_op_loop low msda
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(bs * heads, ch, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)                 # (B*heads, Q, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)                        # (B*heads, C, Q, L*P)
    weight = attn_weight.transpose(1, 2).reshape(bs * heads, 1, nq, levels * points)
    out = (stacked * weight).sum(-1).view(bs, heads * ch, nq)
    return out.transpose(1, 2).contiguous()


class PyramidCrossAttention(nn.Module):
    def __init__(self, dim, heads, level_shapes, points, im2col_step=64):
        super().__init__()
        self.heads, self.level_shapes, self.points = heads, list(level_shapes), points
        self.levels, self.im2col_step = len(level_shapes), im2col_step
        self.offsets = nn.Linear(dim, heads * self.levels * points * 2)
        self.weights = nn.Linear(dim, heads * self.levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.offsets.weight)

    def forward(self, query, ref_2d, value):
        bs, nq, dim = query.shape
        v = self.value_proj(value).view(bs, value.shape[1], self.heads, dim // self.heads)
        off = self.offsets(query).view(bs, nq, self.heads, self.levels, self.points, 2)
        w = self.weights(query).view(bs, nq, self.heads, self.levels * self.points).softmax(-1)
        w = w.view(bs, nq, self.heads, self.levels, self.points)
        loc = ref_2d[:, :, None, None, None] + off * 0.05
        if value.is_cuda and _ms_deform_attn_cuda is not None:  # gt: migration medium msda; fused_op high msda
            shapes = torch.as_tensor(self.level_shapes, dtype=torch.long, device=value.device)
            start = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
            out = _ms_deform_attn_cuda(v, shapes, start, loc, w, self.im2col_step)
        else:
            out = pyramid_point_sampling(v, self.level_shapes, loc, w)  # gt: fused_op high msda
        return self.out_proj(out)
