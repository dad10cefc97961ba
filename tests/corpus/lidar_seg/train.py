"""LiDAR point-cloud semantic segmentation: voxel downsampling, a point MLP with voxel-level context
(scatter mean), trained with cross entropy + Lovasz-softmax on synthetic sweeps."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lovasz import lovasz_softmax_flat

CLASSES, VOXEL = 5, 0.5


def make_sweep(rng, n=2048):
    pts = rng.uniform(-20, 20, (n, 3)).astype(np.float32)
    pts[:, 2] = rng.normal(0, 1, n)
    intensity = rng.uniform(0, 255, (n, 1)).astype(np.float32)
    intensity[rng.uniform(size=n) < 0.01] = np.nan                     # dropped returns
    labels = (np.digitize(np.hypot(pts[:, 0], pts[:, 1]), [5, 10, 15, 18])).astype(np.int64)
    return np.concatenate([pts, intensity], 1), labels


class PointNetSeg(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(4, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.ctx_mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, CLASSES))

    def forward(self, points):
        xyz, intensity = points[:, :3], points[:, 3:]
        intensity = torch.fmin(torch.nan_to_num(intensity, nan=0.0) / 255.0, torch.ones_like(intensity))  # gt: cpu_fallback medium
        feats = self.point_mlp(torch.cat([xyz / 20.0, intensity], 1))
        coords = torch.floor(xyz / VOXEL).long()
        _, inverse = torch.unique(coords, dim=0, return_inverse=True)  # gt: sync medium
        counts = torch.bincount(inverse).clamp(min=1)  # gt: sync medium
        voxel_sum = feats.new_zeros(len(counts), feats.shape[1]).index_add_(0, inverse, feats)  # gt: fused_op low
        voxel_mean = voxel_sum / counts[:, None]
        ctx = self.ctx_mlp(voxel_mean)[inverse]
        return self.head(torch.cat([feats, ctx], 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(24)
    rng = np.random.default_rng(24)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # class weights from the label histogram of a few sweeps (host side, once)
    hist = np.bincount(np.concatenate([make_sweep(rng)[1] for _ in range(4)]), minlength=CLASSES)
    class_weight = torch.tensor(1.0 / np.log(1.02 + hist / hist.sum()), dtype=torch.float32).to(device)
    model = PointNetSeg().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # gt: optimizer medium
    for it in range(args.iters):
        points, labels = make_sweep(rng)
        points, labels = torch.from_numpy(points).to(device), torch.from_numpy(labels).to(device)
        logits = model(points)
        loss = F.cross_entropy(logits, labels, weight=class_weight)
        loss = loss + lovasz_softmax_flat(logits.softmax(1), labels, CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync Adam step counters are host tensors
        print(f"iter {it} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
