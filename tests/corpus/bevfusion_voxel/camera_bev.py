"""Lift-splat camera branch: per-pixel depth distributions lift image features into a frustum, whose
points are splatted into BEV cells; the CUDA bev_pool kernel is used when it was compiled."""
import torch
import torch.nn as nn

try:
    from bevfusion_ops import bev_pool_forward  # compiled from ops/bev_pool/*.cu by setup.py  # gt: migration medium
except ImportError:
    bev_pool_forward = None


def frustum_points(depth_bins, feat_hw, img_hw, device):
    """(D, H, W, 3) image-plane points (u, v, d) at the feature-map cell centers."""
    fh, fw = feat_hw
    ds = torch.tensor(depth_bins, device=device, dtype=torch.float32).view(-1, 1, 1).expand(-1, fh, fw)
    us = torch.linspace(0, img_hw[1] - 1, fw, device=device).view(1, 1, fw).expand_as(ds)
    vs = torch.linspace(0, img_hw[0] - 1, fh, device=device).view(1, fh, 1).expand_as(ds)
    return torch.stack([us, vs, ds], -1)


def splat_reference(volume, geom, bev_shape):
    """Sum the frustum features (M, C) into the BEV cells given by the integer geometry (M, 4: b, z, y, x)."""
    b, z, y, x = bev_shape
    flat = ((geom[:, 0] * z + geom[:, 1]) * y + geom[:, 2]) * x + geom[:, 3]
    out = volume.new_zeros(b * z * y * x, volume.shape[1])
    out.index_put_((flat,), volume, accumulate=True)
    return out.view(b, z, y, x, -1).permute(0, 4, 1, 2, 3)


class LiftSplat(nn.Module):
    def __init__(self, in_channels, channels, depth_bins, img_hw, pc_min, bev_res, bev_hw):
        super().__init__()
        self.depth_bins, self.img_hw, self.channels = depth_bins, img_hw, channels
        self.bev_res, self.bev_hw = bev_res, bev_hw
        self.register_buffer("pc_min", torch.tensor(pc_min, dtype=torch.float32), persistent=False)
        self.depthnet = nn.Conv2d(in_channels, len(depth_bins) + channels, 1)

    def geometry(self, intrins, cam2lidar, feat_hw):
        """LiDAR-frame location of every frustum point, (B, N, D, H, W, 3)."""
        pts = frustum_points(self.depth_bins, feat_hw, self.img_hw, intrins.device)
        uvd = torch.cat([pts[..., :2] * pts[..., 2:], pts[..., 2:]], -1)          # (D, H, W, 3)
        # intrinsics are upper-triangular: solve instead of inverting
        cam = torch.linalg.solve_triangular(intrins[:, :, None], uvd.flatten(0, 2).T.expand(*intrins.shape[:2], 1, 3, -1), upper=True)  # trap: cpu_fallback solve_triangular has an NPU kernel
        cam = cam.squeeze(2).transpose(-1, -2).view(*intrins.shape[:2], *pts.shape[:3], 3)
        return torch.einsum("bnij,bndhwj->bndhwi", cam2lidar[..., :3, :3], cam) + cam2lidar[..., None, None, None, :3, 3]

    def forward(self, feats, intrins, cam2lidar):
        bs, n, c, h, w = feats.shape
        x = self.depthnet(feats.flatten(0, 1))
        depth = x[:, : len(self.depth_bins)].softmax(1)
        ctx = x[:, len(self.depth_bins):]
        volume = (depth[:, None] * ctx[:, :, None]).view(bs, n, self.channels, len(self.depth_bins), h, w)
        volume = volume.permute(0, 1, 3, 4, 5, 2).reshape(-1, self.channels)     # (B*N*D*H*W, C)
        geom = ((self.geometry(intrins, cam2lidar, (h, w)) - self.pc_min) / self.bev_res).long()
        batch_ix = torch.arange(bs, device=feats.device).view(bs, 1, 1, 1, 1).expand(geom.shape[:-1])
        geom = torch.cat([batch_ix[..., None], torch.zeros_like(geom[..., :1]), geom[..., 1:2], geom[..., 0:1]], -1).view(-1, 4)
        kept = ((geom[:, 2] >= 0) & (geom[:, 2] < self.bev_hw[0]) & (geom[:, 3] >= 0) & (geom[:, 3] < self.bev_hw[1]))
        volume, geom = volume[kept], geom[kept]  # gt: sync medium
        bev_shape = (bs, 1, *self.bev_hw)
        if bev_pool_forward is not None and volume.is_cuda:  # gt: migration high dispatch; fused_op high pool
            bev = bev_pool_forward(volume, geom.int(), bev_shape)
        else:
            bev = splat_reference(volume, geom, bev_shape)  # gt: fused_op high pool
        return bev.flatten(1, 2)
