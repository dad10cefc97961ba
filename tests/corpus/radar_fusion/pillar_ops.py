"""Radar pillar encoding: points of all sweeps -> per-pillar max feature -> dense BEV canvas."""
import torch

try:  # compiled scatter kernel shipped with the original code base (CUDA only)
    from radar_pillar_ext import pillar_scatter_max_cuda  # gt: migration medium
except ImportError:
    pillar_scatter_max_cuda = None


def pillar_max(feats, pillar_idx, num_pillars):
    """Max over the points of each pillar: feats (N, C), pillar_idx (N,) in [0, num_pillars)."""
    if feats.is_cuda and pillar_scatter_max_cuda is not None:  # gt: migration medium; fused_op medium pmax
        return pillar_scatter_max_cuda(feats.contiguous(), pillar_idx.int(), num_pillars)
    out = feats.new_full((num_pillars, feats.shape[1]), -1e4)
    return out.index_reduce(0, pillar_idx, feats, "amax", include_self=True)  # gt: cpu_fallback high; fused_op medium pmax; sync low


def scatter_to_canvas(pillar_feats, coords, batch_size, grid):
    """coords (P, 3) = (batch, y, x) -> (B, C, H, W)."""
    canvas = pillar_feats.new_zeros(batch_size * grid * grid, pillar_feats.shape[1])
    flat = coords[:, 0] * grid * grid + coords[:, 1] * grid + coords[:, 2]
    canvas = canvas.index_copy(0, flat, pillar_feats)
    return canvas.view(batch_size, grid, grid, -1).permute(0, 3, 1, 2)
