"""LiDAR + multi-sweep radar BEV fusion detector (CenterFusion / RadarNet flavour): radar sweeps are
ego-motion compensated into the current frame, pillarized, and fused with the LiDAR BEV features."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pillar_ops import pillar_max, scatter_to_canvas

SWEEPS, RADAR_PTS, GRID, RANGE, CLASSES = 6, 96, 32, 40.0, 3


def sweep_pose(rng, k):
    yaw = rng.normal(0, 0.01) * k
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32), np.array([-1.2 * k, 0, 0], np.float32)


class FusionScenes(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        rng = np.random.default_rng(4242 + i)
        radar = np.zeros((SWEEPS, RADAR_PTS, 5), np.float32)   # x, y, z, rcs, valid
        rots = np.zeros((SWEEPS, 3, 3), np.float32)
        trans = np.zeros((SWEEPS, 3), np.float32)
        for k in range(SWEEPS):  # trap: small_op_loop sweep poses and points generated in numpy
            rots[k], trans[k] = sweep_pose(rng, k)
            n = rng.integers(RADAR_PTS // 2, RADAR_PTS)
            radar[k, :n, :2] = rng.uniform(-RANGE, RANGE, (n, 2))
            radar[k, :n, 3] = rng.normal(5, 3, n)
            radar[k, :n, 4] = 1.0
        lidar_bev = rng.normal(0, 1, (8, GRID, GRID)).astype(np.float32)
        heat = np.zeros((CLASSES, GRID, GRID), np.float32)
        heat[rng.integers(0, CLASSES, 6), rng.integers(0, GRID, 6), rng.integers(0, GRID, 6)] = 1.0
        stamps = np.arange(SWEEPS, dtype=np.float64) * 0.075
        return {"radar": torch.from_numpy(radar), "rots": torch.from_numpy(rots), "trans": torch.from_numpy(trans),
                "stamps": torch.from_numpy(stamps), "lidar": torch.from_numpy(lidar_bev), "heat": torch.from_numpy(heat)}


class RadarPillarNet(nn.Module):
    def __init__(self, out_channels=32):
        super().__init__()
        self.pfn = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, out_channels))

    def forward(self, radar, rots, trans, stamps):
        bs = radar.shape[0]
        points = []
        for k in range(SWEEPS):  # gt: small_op_loop medium
            xyz = torch.einsum("bij,bnj->bni", rots[:, k], radar[:, k, :, :3]) + trans[:, k, None]
            dt = (stamps[:, k:k + 1] - stamps[:, :1]).float().expand(-1, RADAR_PTS)[..., None]
            points.append(torch.cat([xyz, radar[:, k, :, 3:4], dt, radar[:, k, :, 4:5]], -1))
        points = torch.stack(points, 1).flatten(1, 2)                          # (B, S*N, 6)
        batch_idx = torch.arange(bs, device=radar.device)[:, None].expand(-1, points.shape[1])
        keep = points[..., 5] > 0
        points, batch_idx = points[keep], batch_idx[keep]  # gt: sync medium
        cell = ((points[:, :2] + RANGE) / (2 * RANGE) * GRID).long().clamp(0, GRID - 1)
        key = batch_idx * GRID * GRID + cell[:, 1] * GRID + cell[:, 0]
        uniq, inverse = torch.unique(key, return_inverse=True)  # gt: sync medium
        num_pillars = uniq.shape[0]  # trap: sync the size of an existing tensor needs no read
        feats = pillar_max(self.pfn(points[:, :5]), inverse, num_pillars)
        coords = torch.stack([uniq // (GRID * GRID), (uniq // GRID) % GRID, uniq % GRID], 1)
        return scatter_to_canvas(feats, coords, bs, GRID)


class FusionDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.radar = RadarPillarNet(32)
        self.lidar = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                   nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.radar_proj = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, CLASSES, 1))

    def forward(self, batch):
        radar_bev = self.radar(batch["radar"], batch["rots"], batch["trans"], batch["stamps"])
        fused = F.relu(self.lidar(batch["lidar"]) + self.radar_proj(radar_bev))  # gt: fused_op low
        return self.head(fused)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(5)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(FusionScenes(), batch_size=2)
    model = FusionDetector().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)  # gt: optimizer medium
    pos_weight = torch.tensor([4.0, 4.0, 8.0])
    print(f"class weights {pos_weight.max().item():.1f} max")  # trap: sync CPU config tensor
    pos_weight = pos_weight.view(-1, 1, 1).to(device)
    for epoch in range(args.epochs):
        for it, batch in enumerate(loader):
            span = float(batch["stamps"][0, -1] - batch["stamps"][0, 0])  # trap: sync host tensor from numpy
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch)
            loss = F.binary_cross_entropy_with_logits(logits, batch["heat"], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync SGD keeps its momentum on the device
            print(f"epoch {epoch} it {it} loss {loss:.6f} span {span:.3f}s")  # gt: sync medium


if __name__ == "__main__":
    main()
