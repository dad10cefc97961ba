"""Aligning the previous BEV feature map to the current ego frame."""
import torch
import torch.nn.functional as F


def relative_pose(prev_ego2global, curr_ego2global):
    """T_curr<-prev = inv(curr) @ prev, solved instead of inverted for stability."""
    return torch.linalg.solve(curr_ego2global, prev_ego2global)  # gt: cpu_fallback high; sync low


def warp_bev(prev_bev, rel_pose, bev_range):
    """Resample prev_bev (B, C, H, W) at the current frame's cell centres mapped into the previous frame."""
    b, c, h, w = prev_bev.shape
    ys, xs = torch.meshgrid(torch.linspace(-bev_range, bev_range, h, device=prev_bev.device),
                            torch.linspace(-bev_range, bev_range, w, device=prev_bev.device), indexing="ij")
    cells = torch.stack([xs, ys, torch.zeros_like(xs), torch.ones_like(xs)], -1).view(1, -1, 4, 1)
    inv = torch.inverse(rel_pose)  # trap: cpu_fallback inverse has an NPU kernel; gt: sync low
    prev_xy = (inv[:, None] @ cells).squeeze(-1)[..., :2] / bev_range  # a 4x4 pose times (x, y, 0, 1) cells, the npu_batch_matmul shape; gt: fused_op low
    grid = prev_xy.view(b, h, w, 2)
    return F.grid_sample(prev_bev, grid, align_corners=True)


def align_history(prev_bev, rel_pose, bev_range):
    if prev_bev.device.type == "cuda":  # gt: migration medium
        from bev_warp_ext import warp_bev_cuda  # compiled CUDA kernel of the original project
        return warp_bev_cuda(prev_bev, rel_pose, bev_range)
    return warp_bev(prev_bev, rel_pose, bev_range)
