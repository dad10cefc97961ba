"""Two-stage LiDAR detector, second stage only: refine proposals from the points inside each RoI."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from roi_ops import points_in_rois, roi_principal_axes

NUM_ROIS, NUM_POINTS, FEAT = 24, 512, 32


class PointEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, FEAT))

    def forward(self, pts):
        return self.mlp(pts)


class RoIHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(FEAT + 4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.cls = nn.Linear(64, 1)
        self.reg = nn.Linear(64, 7)

    def forward(self, point_feats, mask, axes, evals):
        w = mask.float()
        pooled = (w @ point_feats) / w.sum(1, keepdim=True).clamp(min=1)       # mean pool per RoI
        x = self.fc(torch.cat([pooled, axes, evals.clamp(min=1e-6).log()], -1))
        return self.cls(x).squeeze(-1), self.reg(x)


def make_frame(rng):
    centers = rng.uniform(-20, 20, (6, 2))
    pts = [np.concatenate([c + rng.normal(0, 1.0, (NUM_POINTS // 8, 2)), rng.normal(0, 0.5, (NUM_POINTS // 8, 1))], 1)
           for c in centers]
    pts.append(np.concatenate([rng.uniform(-25, 25, (NUM_POINTS - 6 * (NUM_POINTS // 8), 2)),
                               rng.normal(-1.5, 0.1, (NUM_POINTS - 6 * (NUM_POINTS // 8), 1))], 1))
    pts = np.concatenate(pts).astype(np.float32)
    intensity = rng.uniform(0, 1, (NUM_POINTS, 1)).astype(np.float32)
    rois = np.concatenate([np.repeat(centers, NUM_ROIS // 6, 0) + rng.normal(0, 0.8, (NUM_ROIS, 2)),
                           np.zeros((NUM_ROIS, 1)), rng.uniform(2, 5, (NUM_ROIS, 3)),
                           rng.uniform(-np.pi, np.pi, (NUM_ROIS, 1))], 1).astype(np.float32)
    gt = np.concatenate([np.repeat(centers, NUM_ROIS // 6, 0), np.zeros((NUM_ROIS, 1)),
                         np.full((NUM_ROIS, 3), 3.0), np.zeros((NUM_ROIS, 1))], 1).astype(np.float32)
    return np.concatenate([pts, intensity], 1), rois, gt


def sample_rois(rois, gt, fg_thresh=1.0):
    """Label proposals by center distance to their ground truth (host-side numbers, device tensors)."""
    dist = (rois[:, :2] - gt[:, :2]).norm(dim=-1)
    labels = (dist < fg_thresh).float()
    reg_target = gt - rois
    return labels, reg_target


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.manual_seed(8)
    rng = np.random.default_rng(8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder, head = PointEncoder().to(device), RoIHead().to(device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=args.lr)  # gt: optimizer medium
    for it in range(args.iters):
        pts_np, rois_np, gt_np = make_frame(rng)
        points = torch.from_numpy(pts_np).to(device)
        rois = torch.from_numpy(rois_np).to(device)
        gt = torch.from_numpy(gt_np).to(device)
        mask = points_in_rois(points[:, :3], rois)
        axes, evals = roi_principal_axes(points[:, :3], mask)
        cls, reg = head(encoder(points), mask, axes, evals)
        labels, reg_target = sample_rois(rois, gt)
        fg = labels > 0
        loss_cls = F.binary_cross_entropy_with_logits(cls, labels)
        loss_reg = F.smooth_l1_loss(reg[fg], reg_target[fg]) if fg.sum() > 0 else reg.sum() * 0  # gt: sync medium
        loss = loss_cls + loss_reg
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync Adam step counters are host tensors
        num_fg = int(fg_np_count(rois_np, gt_np))
        print(f"iter {it} loss {loss.item():.6f} fg {num_fg}")  # gt: sync medium


def fg_np_count(rois_np, gt_np, fg_thresh=1.0):
    count = torch.tensor(np.linalg.norm(rois_np[:, :2] - gt_np[:, :2], axis=1) < fg_thresh).sum()
    return count.item()  # trap: sync numpy-born tensor


if __name__ == "__main__":
    main()
