"""Dynamic pillar encoder: every point is scattered into its BEV cell, points are decorated with the offset
to their pillar's mean, a linear PFN layer, then a max over each pillar's points."""
import torch
import torch.nn as nn


class DynamicPillarEncoder(nn.Module):
    def __init__(self, pc_range, voxel_size, grid_hw, out_channels=32):
        super().__init__()
        self.pc_min = pc_range[:2]
        self.voxel_size = voxel_size
        self.grid_h, self.grid_w = grid_hw
        self.pfn = nn.Sequential(nn.Linear(4 + 3, out_channels), nn.LayerNorm(out_channels), nn.ReLU())
        self.out_channels = out_channels

    def forward(self, points, num_valid):
        """points (B, N, 4) padded, num_valid (B,) -> BEV pseudo image (B, C, H, W)."""
        bs, n = points.shape[:2]
        cells = bs * self.grid_h * self.grid_w
        ix = ((points[..., 0] - self.pc_min[0]) / self.voxel_size).floor().long()
        iy = ((points[..., 1] - self.pc_min[1]) / self.voxel_size).floor().long()
        valid = (ix >= 0) & (ix < self.grid_w) & (iy >= 0) & (iy < self.grid_h)
        valid &= torch.arange(n, device=points.device)[None] < num_valid[:, None]
        batch = torch.arange(bs, device=points.device)[:, None].expand(bs, n)
        # padded and out-of-range points all go to one extra dump cell that is cut off at the end
        flat = torch.where(valid, (batch * self.grid_h + iy) * self.grid_w + ix, torch.full_like(ix, cells)).reshape(-1)  # trap: sync no mask read, invalid points go to a dump cell
        pts = points.reshape(-1, 4)
        sums = pts.new_zeros(cells + 1, 3).index_add_(0, flat, pts[:, :3])
        counts = torch.bincount(flat, minlength=cells + 1)  # gt: sync medium; fused_op low pmean
        mean = sums / counts.clamp(min=1)[:, None].to(sums.dtype)  # gt: fused_op low pmean
        decorated = torch.cat([pts, pts[:, :3] - mean[flat]], -1)
        feats = self.pfn(decorated)
        pooled = feats.new_zeros(cells + 1, self.out_channels)
        pooled = pooled.scatter_reduce(0, flat[:, None].expand_as(feats), feats, "amax", include_self=False)  # gt: fused_op low pmax
        bev = pooled[:cells].view(bs, self.grid_h, self.grid_w, -1)
        return bev.permute(0, 3, 1, 2).contiguous()
