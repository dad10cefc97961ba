"""Lift-splat view transformer: per-pixel depth distribution x context, splatted into a BEV grid."""
import torch
import torch.nn as nn

try:  # the CUDA extension of the original repository; absent on most machines
    from bev_pool_ext import bev_pool_v2_cuda  # gt: migration medium
except ImportError:
    bev_pool_v2_cuda = None


def voxel_pooling_train(geom, feats, grid_lower, grid_interval, grid_size):
    """Sum the features of all frustum points that fall into the same BEV cell (the cumsum trick)."""
    batch, num_points, channels = feats.shape
    nx, ny = int(grid_size[0]), int(grid_size[1])  # trap: sync CPU config tensor
    geom = ((geom - grid_lower) / grid_interval).long()
    batch_ix = torch.arange(batch, device=feats.device).view(batch, 1).expand(batch, num_points)
    geom = torch.cat([geom.reshape(-1, 3), batch_ix.reshape(-1, 1)], 1)
    feats = feats.reshape(-1, channels)
    kept = ((geom[:, 0] >= 0) & (geom[:, 0] < nx) & (geom[:, 1] >= 0) & (geom[:, 1] < ny)
            & (geom[:, 2] >= 0) & (geom[:, 2] < 1))
    feats, geom = feats[kept], geom[kept]  # gt: sync medium kept-mask
    ranks = geom[:, 0] * ny * batch + geom[:, 1] * batch + geom[:, 3]
    order = ranks.argsort()  # gt: fused_op high bevpool
    feats, geom, ranks = feats[order], geom[order], ranks[order]
    feats = feats.cumsum(0)
    keep = torch.ones(feats.shape[0], device=feats.device, dtype=torch.bool)
    keep[:-1] = ranks[1:] != ranks[:-1]
    feats, geom = feats[keep], geom[keep]  # gt: sync medium keep-mask
    feats = torch.cat((feats[:1], feats[1:] - feats[:-1]))
    final = feats.new_zeros((batch, channels, ny, nx))
    final[geom[:, 3], :, geom[:, 1], geom[:, 0]] = feats  # gt: fused_op high bevpool
    return final


class LSSViewTransformer(nn.Module):
    def __init__(self, in_channels, out_channels, depth_bins, image_size, feat_stride, grid):
        super().__init__()
        self.depth_bins = depth_bins
        self.out_channels = out_channels
        self.depth_net = nn.Conv2d(in_channels, depth_bins + out_channels, 1)
        self.register_buffer("grid_lower", torch.tensor(grid["lower"]), persistent=False)
        self.register_buffer("grid_interval", torch.tensor(grid["interval"]), persistent=False)
        self.grid_size = torch.tensor(grid["size"])          # a CPU config tensor, read on the host
        self.register_buffer("frustum", self.create_frustum(depth_bins, image_size, feat_stride), persistent=False)

    @staticmethod
    def create_frustum(depth_bins, image_size, stride):
        h, w = image_size[0] // stride, image_size[1] // stride
        ds = torch.linspace(1.0, 40.0, depth_bins).view(-1, 1, 1).expand(-1, h, w)
        xs = torch.linspace(0, image_size[1] - 1, w).view(1, 1, w).expand(depth_bins, h, w)
        ys = torch.linspace(0, image_size[0] - 1, h).view(1, h, 1).expand(depth_bins, h, w)
        return torch.stack((xs, ys, ds), -1)

    def get_geometry(self, cam2ego, intrins):
        b, n = cam2ego.shape[:2]
        points = self.frustum.view(1, 1, *self.frustum.shape)
        points = torch.cat((points[..., :2] * points[..., 2:3], points[..., 2:3]), -1)
        combine = cam2ego[:, :, :3, :3] @ torch.inverse(intrins)  # trap: cpu_fallback inverse has an NPU kernel; gt: sync low
        points = (combine.view(b, n, 1, 1, 1, 3, 3) @ points.unsqueeze(-1)).squeeze(-1)  # gt: migration high
        return points + cam2ego[:, :, :3, 3].view(b, n, 1, 1, 1, 3)

    def forward(self, img_feats, cam2ego, intrins):
        b, n, c, h, w = img_feats.shape
        x = self.depth_net(img_feats.flatten(0, 1))
        depth = x[:, :self.depth_bins].softmax(1)
        context = x[:, self.depth_bins:]
        volume = depth.unsqueeze(1) * context.unsqueeze(2)                   # (bn, C, D, h, w)
        volume = volume.view(b, n, self.out_channels, self.depth_bins, h, w).permute(0, 1, 3, 4, 5, 2)
        geom = self.get_geometry(cam2ego, intrins)
        if bev_pool_v2_cuda is not None and volume.is_cuda:  # gt: migration high dispatch; fused_op high bevpool
            bev = bev_pool_v2_cuda(geom, volume)
        else:
            bev = voxel_pooling_train(geom.reshape(b, -1, 3), volume.reshape(b, -1, self.out_channels),
                                      self.grid_lower, self.grid_interval, self.grid_size)
        return bev, depth
