"""Multi-camera BEV semantic segmentation (drivable area, lane divider, vehicle) on synthetic rigs."""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from projection import bev_grid, lift_to_bev

NUM_CAMS, CLASSES, BEV = 6, 3, 24


class CameraBackbone(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                                  nn.Conv2d(16, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.body(x)


class BEVSegNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = CameraBackbone(32)
        self.register_buffer("grid", bev_grid(BEV, BEV, 2, (-24, 24), (-24, 24), (-1, 1), "cpu"), persistent=False)
        self.decoder = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                                     nn.Conv2d(32, CLASSES, 1))

    def forward(self, imgs, lidar2img):
        b, n = imgs.shape[:2]
        feats = self.backbone(imgs.flatten(0, 1))
        feats = feats.view(b, n, *feats.shape[1:])
        bev = lift_to_bev(feats, self.grid, lidar2img, imgs.shape[-2:])
        return self.decoder(bev)


def dice_loss(logits, target, eps=1.0):
    prob = logits.sigmoid()
    losses = [1 - (2 * (prob[:, k] * target[:, k]).sum() + eps) / (prob[:, k].sum() + target[:, k].sum() + eps)
              for k in range(CLASSES)]  # trap: small_op_loop three classes, a few ops each
    return sum(losses) / CLASSES


def camera_rig(batch):
    mats = []
    for cam in range(NUM_CAMS):
        yaw = 2 * math.pi * cam / NUM_CAMS
        c, s = math.cos(yaw), math.sin(yaw)
        ext = torch.tensor([[s, -c, 0, 0], [0, 0, -1, 1.5], [c, s, 0, 0], [0, 0, 0, 1]], dtype=torch.float32)
        intr = torch.tensor([[32, 0, 32, 0], [0, 32, 16, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
        mats.append(intr @ ext)
    return torch.stack(mats)[None].repeat(batch, 1, 1, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--amp", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(6)
    device = "npu" if hasattr(torch, "npu") and torch.npu.is_available() else ("cuda" if torch.cuda.is_available() else "cpu")
    model = BEVSegNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)  # gt: optimizer medium
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=args.iters)
    lidar2img = camera_rig(args.batch_size).to(device)
    g = torch.Generator().manual_seed(0)
    pos_weight = torch.tensor([2.0, 4.0, 3.0]).view(1, CLASSES, 1, 1).to(device)
    history = []
    for it in range(args.iters):
        imgs = torch.randn(args.batch_size, NUM_CAMS, 3, 32, 64, generator=g).to(device)
        target = (torch.rand(args.batch_size, CLASSES, BEV, BEV, generator=g) > 0.8).float().to(device)
        logits = model(imgs, lidar2img)
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight) + dice_loss(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
        scheduler.step()
        history.append(loss.detach())
        if it % 10 == 0:
            print(f"it {it} loss {loss.item():.6f}")  # trap: sync logging every 10 iterations
    print("losses", " ".join(f"{v:.6f}" for v in torch.stack(history).tolist()))  # trap: sync once after training


if __name__ == "__main__":
    main()
