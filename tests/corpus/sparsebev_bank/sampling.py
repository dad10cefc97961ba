"""Spatio-temporal sampling of a SparseBEV-style decoder: every query's sampling points, warped into each
past frame, projected into the cameras and read bilinearly from every FPN level, mixed with learned weights."""
import torch
import torch.nn.functional as F

try:
    from sparsebev_ops import msmv_sampling_cuda  # built from csrc/msmv_sampling.cu by setup.py develop  # gt: migration medium
except ImportError:
    msmv_sampling_cuda = None


def sample_pyramid(flat_value, level_hw, uv, mix):
    """flat_value (BF, sum HW, G, C/G) of all levels; uv (BF, Q, G, P, L, 2) in [0, 1]; mix (BF, Q, G, P, L)."""
    bf, _, groups, gdim = flat_value.shape
    num_query, num_pts = uv.shape[1], uv.shape[3]
    per_level = flat_value.split([h * w for h, w in level_hw], dim=1)
    grids = 2 * uv - 1
    gathered = []
    for lvl, (h, w) in enumerate(level_hw):  # gt: fused_op high msda; small_op_loop low msda
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(bf * groups, gdim, h, w)
        g = grids[:, :, :, :, lvl].transpose(1, 2).reshape(bf * groups, num_query, num_pts, 2)
        gathered.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(gathered, dim=-1)                                  # (BF*G, C/G, Q, P, L)
    w = mix.transpose(1, 2).reshape(bf * groups, 1, num_query, num_pts, len(level_hw))
    out = (stacked * w).sum(-1).sum(-1)                                      # (BF*G, C/G, Q)
    return out.view(bf, groups * gdim, num_query).transpose(1, 2)


def temporal_sampling(flat_value, level_hw, uv, mix, num_frames):
    """Queries are repeated over frames (BF = B * frames); the frames are summed after sampling."""
    if msmv_sampling_cuda is not None and flat_value.is_cuda:  # gt: migration high dispatch; fused_op high msda
        out = msmv_sampling_cuda(flat_value, level_hw, uv, mix)
    else:
        out = sample_pyramid(flat_value, level_hw, uv, mix)  # gt: fused_op high msda
    return out.view(-1, num_frames, *out.shape[1:]).sum(1)
