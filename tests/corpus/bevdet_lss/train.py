"""BEVDet-style camera-only BEV detector (lift-splat-shoot) on synthetic multi-camera data."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from view_transformer import LSSViewTransformer

NUM_CAMS = 4
IMAGE_SIZE = (32, 64)
STRIDE = 8
DEPTH_BINS = 12
GRID = dict(lower=[-20.0, -20.0, -5.0], interval=[1.25, 1.25, 10.0], size=[32, 32, 1])


def rotation_z(yaw):
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)


class MultiCamScenes(Dataset):
    def __init__(self, length, seed=0):
        self.length, self.seed = length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(self.seed + idx)
        imgs = torch.randn(NUM_CAMS, 3, *IMAGE_SIZE, generator=g)
        cam2ego = torch.zeros(NUM_CAMS, 4, 4)
        intrins = torch.zeros(NUM_CAMS, 3, 3)
        for cam in range(NUM_CAMS):  # trap: small_op_loop host-side calibration on CPU tensors
            yaw = 2 * math.pi * cam / NUM_CAMS
            rot = torch.from_numpy(rotation_z(yaw)) @ torch.tensor([[0., 0., 1.], [-1., 0., 0.], [0., -1., 0.]])
            cam2ego[cam, :3, :3] = rot
            cam2ego[cam, :3, 3] = torch.tensor([1.0 * math.cos(yaw), 1.0 * math.sin(yaw), 1.6])
            cam2ego[cam, 3, 3] = 1
            intrins[cam] = torch.tensor([[40.0, 0, IMAGE_SIZE[1] / 2], [0, 40.0, IMAGE_SIZE[0] / 2], [0, 0, 1]])
        depth = torch.rand(NUM_CAMS, IMAGE_SIZE[0] // STRIDE, IMAGE_SIZE[1] // STRIDE, generator=g) * 45.0
        heat = (torch.rand(1, 32, 32, generator=g) > 0.97).float()
        return imgs, cam2ego, intrins, depth, heat


class ImageBackbone(nn.Module):
    def __init__(self, out_channels=32):
        super().__init__()
        layers, c = [], 3
        for width in (16, 24, out_channels):
            layers += [nn.Conv2d(c, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class BEVDetLite(nn.Module):
    def __init__(self):
        super().__init__()
        self.img_backbone = ImageBackbone(32)
        self.view_transformer = LSSViewTransformer(32, 16, DEPTH_BINS, IMAGE_SIZE, STRIDE, GRID)
        self.bev_encoder = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.heat_head = nn.Conv2d(32, 1, 1)

    def forward(self, imgs, cam2ego, intrins):
        b, n = imgs.shape[:2]
        feats = self.img_backbone(imgs.flatten(0, 1))
        feats = feats.view(b, n, *feats.shape[1:])
        bev, depth = self.view_transformer(feats, cam2ego, intrins)
        return self.heat_head(self.bev_encoder(bev)), depth


def depth_loss(depth_pred, depth_gt):
    """Cross entropy on the depth bins of the pixels that have a LiDAR return."""
    bins = ((depth_gt - 1.0) / (39.0 / (DEPTH_BINS - 1))).round().long()
    fg_mask = (bins >= 0) & (bins < DEPTH_BINS)
    depth_pred = depth_pred.permute(0, 2, 3, 1).reshape(-1, DEPTH_BINS)
    labels = bins.reshape(-1)
    labels[~fg_mask.reshape(-1)] = 0  # trap: sync masked write
    weight = fg_mask.reshape(-1).float()
    ce = F.nll_loss(depth_pred.clamp(min=1e-6).log(), labels, reduction="none")
    return (ce * weight).sum() / weight.sum().clamp(min=1.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--log-interval", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    model = BEVDetLite().to(device)
    loader = DataLoader(MultiCamScenes(args.samples), batch_size=args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)  # gt: optimizer medium
    losses = []
    it = 0
    for epoch in range(args.epochs):
        for imgs, cam2ego, intrins, depth_gt, heat_gt in loader:  # trap: sync DataLoader internals run on the host
            imgs, cam2ego, intrins = imgs.to(device), cam2ego.to(device), intrins.to(device)
            depth_gt, heat_gt = depth_gt.to(device), heat_gt.to(device)
            heat, depth = model(imgs, cam2ego, intrins)
            loss = F.binary_cross_entropy_with_logits(heat, heat_gt) + 0.5 * depth_loss(depth, depth_gt.flatten(0, 1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            losses.append(loss.detach())
            if it % args.log_interval == 0:
                print(f"iter {it} loss {loss.item():.6f}")  # trap: sync logging every 50 iterations
            it += 1
        epoch_losses = torch.stack(losses[-len(loader):]).tolist()  # trap: sync once per epoch, after the loop
        print("epoch", epoch, "losses", " ".join(f"{v:.6f}" for v in epoch_losses))


if __name__ == "__main__":
    main()
