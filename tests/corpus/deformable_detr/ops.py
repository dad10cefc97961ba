"""Deformable attention sampling, pure PyTorch (works everywhere, slow everywhere)."""
import torch
import torch.nn.functional as F


def sample_multilevel_features(value, shapes, locations, weights):
    """value (N, S, M, D); shapes [(H, W)] per level; locations (N, Lq, M, L, P, 2) in [0, 1];
    weights (N, Lq, M, L, P). Returns (N, Lq, M*D)."""
    n, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    samples = []
    for lvl, (h, w) in enumerate(shapes):  # gt: fused_op high msda
        v = per_level[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * num_points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()
