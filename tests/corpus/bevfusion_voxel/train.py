"""BEVFusion-style camera + LiDAR detector: a lift-splat camera branch and a pillarized LiDAR branch are
fused in BEV by a convolutional fuser; a CenterPoint-like heatmap head is trained with a gaussian focal
loss on host-rendered heatmaps."""
import argparse
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from camera_bev import LiftSplat
from voxelize import dynamic_voxelize, scatter_to_bev


@dataclass
class Config:
    cams: int = 2
    img_hw: tuple = (64, 176)
    max_points: int = 4000
    pc_min: tuple = (-32.0, -32.0, -3.0)
    voxel_size: tuple = (2.0, 2.0, 8.0)
    grid: tuple = (32, 32, 1)                      # x, y, z cells
    depth_bins: list = field(default_factory=lambda: [float(d) for d in range(2, 32, 2)])
    channels: int = 32
    classes: int = 3
    batch_size: int = 2
    iters: int = 6
    lr: float = 2e-4


def camera_extrinsics(yaw):
    """cam2lidar 4x4 for a camera at 1.5 m looking along `yaw` (camera z forward, x right, y down)."""
    c, s = math.cos(yaw), math.sin(yaw)
    fwd, right = np.array([c, s, 0.0]), np.array([s, -c, 0.0])
    m = np.eye(4, dtype=np.float32)
    m[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], fwd], 1)
    m[:3, 3] = (0.0, 0.0, 1.5)
    return m


class FusionScenes(torch.utils.data.Dataset):
    def __init__(self, cfg, n):
        self.cfg, self.n = cfg, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        cfg, rng = self.cfg, np.random.default_rng(77 + i)
        n_pts = int(rng.integers(cfg.max_points // 2, cfg.max_points))
        points = np.zeros((cfg.max_points, 4), np.float32)
        points[:n_pts, :2] = rng.uniform(-36, 36, (n_pts, 2))     # some fall outside the range
        points[:n_pts, 2] = rng.uniform(-2, 2, n_pts)
        points[:n_pts, 3] = rng.uniform(0, 1, n_pts)
        imgs = rng.normal(0, 1, (cfg.cams, 16, cfg.img_hw[0] // 8, cfg.img_hw[1] // 8)).astype(np.float32)
        f = 0.5 * cfg.img_hw[1]
        intrins = np.tile(np.array([[f, 0, cfg.img_hw[1] / 2], [0, f, cfg.img_hw[0] / 2], [0, 0, 1]], np.float32), (cfg.cams, 1, 1))
        cam2lidar = np.stack([camera_extrinsics(math.pi * k) for k in range(cfg.cams)])
        heat = np.zeros((cfg.classes, cfg.grid[1], cfg.grid[0]), np.float32)
        ys, xs = np.mgrid[: cfg.grid[1], : cfg.grid[0]]
        for _ in range(int(rng.integers(3, 8))):  # trap: small_op_loop heatmap rendering in numpy in the dataset
            cx, cy, cls = rng.uniform(2, cfg.grid[0] - 2), rng.uniform(2, cfg.grid[1] - 2), rng.integers(0, cfg.classes)
            heat[cls] = np.maximum(heat[cls], np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 1.5 ** 2)))
        return {"points": torch.from_numpy(points), "num_points": torch.tensor(n_pts), "imgs": torch.from_numpy(imgs),
                "intrins": torch.from_numpy(intrins), "cam2lidar": torch.from_numpy(cam2lidar), "heat": torch.from_numpy(heat)}


class BEVFusion(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.register_buffer("pc_min", torch.tensor(cfg.pc_min), persistent=False)
        self.register_buffer("voxel_size", torch.tensor(cfg.voxel_size), persistent=False)
        self.register_buffer("grid", torch.tensor(cfg.grid), persistent=False)
        self.pfn = nn.Sequential(nn.Linear(4, c), nn.LayerNorm(c), nn.ReLU())
        self.lidar_encoder = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.camera = LiftSplat(16, c, cfg.depth_bins, cfg.img_hw, (cfg.pc_min[0], cfg.pc_min[1], -5.0),
                                cfg.voxel_size[0], (cfg.grid[1], cfg.grid[0]))
        self.fuser = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, cfg.classes, 1))
        self.head[-1].bias.data.fill_(-2.19)

    def forward(self, batch):
        feats, coords = dynamic_voxelize(batch["points"], batch["num_points"], self.pc_min, self.voxel_size, self.grid)
        lidar_bev = scatter_to_bev(self.pfn(feats), coords, batch["points"].shape[0], self.cfg.grid[:2])
        cam_bev = self.camera(batch["imgs"], batch["intrins"], batch["cam2lidar"])
        fused = self.fuser(torch.cat([cam_bev, self.lidar_encoder(lidar_bev)], 1))
        return self.head(fused)


def gaussian_focal_loss(logits, target, alpha=2.0, gamma=4.0):
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -pred.log() * (1 - pred).pow(alpha) * pos
    neg_loss = -(1 - pred).log() * pred.pow(alpha) * (1 - target).pow(gamma) * (1 - pos)
    return (pos_loss + neg_loss).sum() / (target > 0.5).sum().clamp(min=1)  # trap: sync normalizer stays on the device


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=Config.iters)
    args = ap.parse_args()
    cfg = Config(iters=args.iters)
    torch.manual_seed(3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = BEVFusion(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)  # gt: optimizer medium
    loader = torch.utils.data.DataLoader(FusionScenes(cfg, cfg.iters * cfg.batch_size), batch_size=cfg.batch_size)
    for it, batch in enumerate(loader):  # trap: sync DataLoader iteration runs on the host
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = gaussian_focal_loss(model(batch), batch["heat"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        print("iter %d loss %.6f" % (it, loss.detach()))  # gt: sync medium


if __name__ == "__main__":
    main()
