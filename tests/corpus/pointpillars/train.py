"""PointPillars-style LiDAR detector: pillar feature net, scatter to a BEV canvas, SSD-like head."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from voxelize import voxelize

PC_RANGE = np.array([0, -16, -3, 32, 16, 1], np.float32)
VOXEL = np.array([1.0, 1.0, 4.0], np.float32)
NX, NY = 32, 32


def collate(batch):
    """Concatenate pillars of the batch; prefix every coordinate with its sample index."""
    voxels, coords, nums, targets = [], [], [], []
    for i, (v, c, n, t) in enumerate(batch):
        voxels.append(torch.from_numpy(v))
        coords.append(F.pad(torch.from_numpy(c), (1, 0), value=i))
        nums.append(torch.from_numpy(n))
        targets.append(torch.from_numpy(t))
    return torch.cat(voxels), torch.cat(coords), torch.cat(nums), torch.stack(targets)


class LidarSweeps(torch.utils.data.Dataset):
    def __init__(self, n, seed=4):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(self.seed + i)
        pts = np.concatenate([rng.uniform(PC_RANGE[:3], PC_RANGE[3:], (600, 3)), rng.uniform(0, 1, (600, 1))], 1)
        v, c, n = voxelize(pts.astype(np.float32), VOXEL, PC_RANGE, 8, 400)
        target = (rng.uniform(size=(1, NY, NX)) > 0.97).astype(np.float32)
        return v, c, n, target


class PillarFeatureNet(nn.Module):
    def __init__(self, out_channels=32):
        super().__init__()
        self.linear = nn.Linear(9, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, voxels, num_points, coords):
        mask = torch.arange(voxels.shape[1], device=voxels.device)[None] < num_points[:, None]
        mean = (voxels[..., :3] * mask[..., None]).sum(1, keepdim=True) / num_points.clamp(min=1)[:, None, None]
        center_x = coords[:, 3:4].float() * VOXEL[0] + (VOXEL[0] / 2 + PC_RANGE[0])
        center_y = coords[:, 2:3].float() * VOXEL[1] + (VOXEL[1] / 2 + PC_RANGE[1])
        f_center = torch.stack([voxels[..., 0] - center_x, voxels[..., 1] - center_y], -1)
        feats = torch.cat([voxels, voxels[..., :3] - mean, f_center], -1) * mask[..., None]
        x = F.relu(self.norm(self.linear(feats).transpose(1, 2)).transpose(1, 2))
        return x.max(1).values


class PointPillarsScatter(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channels = channels

    def forward(self, pillar_features, coords, batch_size):
        canvases = []
        for batch_itt in range(batch_size):  # gt: small_op_loop low scatter
            this_mask = coords[:, 0] == batch_itt
            this_coords = coords[this_mask, :]  # gt: sync medium scatter-mask
            indices = this_coords[:, 2] * NX + this_coords[:, 3]
            voxels = pillar_features[this_mask, :].t()
            canvas = pillar_features.new_zeros(self.channels, NX * NY)
            canvas[:, indices] = voxels
            canvases.append(canvas)
        return torch.stack(canvases).view(batch_size, self.channels, NY, NX)


def pillar_max_by_group(point_feats, group_ids):
    """Max over the points of each group (pillar-level context feature)."""
    groups = torch.unique(group_ids)  # gt: sync medium; fused_op medium groupmax
    pooled = []
    for g in groups:  # gt: fused_op medium groupmax; small_op_loop high groupmax
        pooled.append(point_feats[group_ids == g].max(0).values)  # gt: sync medium groupmask
    return torch.stack(pooled)


class PointPillars(nn.Module):
    def __init__(self):
        super().__init__()
        self.pfn = PillarFeatureNet(32)
        self.scatter = PointPillarsScatter(64)
        self.context = nn.Linear(32, 32)
        self.backbone = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.head = nn.Conv2d(64, 1, 1)

    def forward(self, voxels, coords, num_points, batch_size):
        pillars = self.pfn(voxels, num_points, coords)
        # a coarse 4x4-cell context: max over the pillars in each coarse cell, broadcast back
        coarse = coords[:, 0] * 64 + (coords[:, 2] // 4) * 8 + coords[:, 3] // 4
        ctx = pillar_max_by_group(self.context(pillars), coarse)
        ctx = ctx[torch.unique(coarse, return_inverse=True)[1]]  # gt: sync medium
        bev = self.scatter(torch.cat([pillars, ctx], 1), coords, batch_size)
        return self.head(self.backbone(bev))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    model = PointPillars().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.95, 0.99))  # gt: optimizer medium
    loader = torch.utils.data.DataLoader(LidarSweeps(8), batch_size=args.batch_size, collate_fn=collate)
    for epoch in range(args.epochs):
        for i, (voxels, coords, nums, target) in enumerate(loader):  # trap: sync DataLoader internals run on the host
            voxels, coords, nums, target = voxels.to(device), coords.to(device), nums.to(device), target.to(device)
            pred = model(voxels, coords, nums, args.batch_size)
            loss = F.binary_cross_entropy_with_logits(pred, target, pos_weight=torch.tensor(10.0, device=device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
            print(f"epoch {epoch} iter {i} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
