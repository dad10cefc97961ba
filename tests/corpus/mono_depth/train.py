"""Monocular depth estimation (encoder-decoder with skip connections, SILog loss) on synthetic scenes."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from metrics import depth_metrics

MAX_DEPTH = 80.0


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, stride=1):
        super().__init__()
        cout = mid * 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity  # gt: fused_op low add-relu
        return self.relu(out)


class DepthNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.enc1 = Bottleneck(16, 8, 2)
        self.enc2 = Bottleneck(32, 16, 2)
        self.dec2 = nn.Conv2d(64 + 32, 32, 3, padding=1)
        self.dec1 = nn.Conv2d(32 + 16, 16, 3, padding=1)
        self.out = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x):
        s = self.stem(x)
        e1 = self.enc1(s)
        e2 = self.enc2(e1)
        d2 = F.relu(self.dec2(torch.cat([F.interpolate(e2, size=e1.shape[-2:], mode="bilinear"), e1], 1)))
        d1 = F.relu(self.dec1(torch.cat([F.interpolate(d2, size=s.shape[-2:], mode="bilinear"), s], 1)))
        d0 = F.interpolate(self.out(d1), size=x.shape[-2:], mode="bilinear")
        return torch.sigmoid(d0) * MAX_DEPTH


class SILogLoss(nn.Module):
    def __init__(self, variance_focus=0.85):
        super().__init__()
        self.variance_focus = variance_focus

    def forward(self, pred, target):
        mask = target > 1e-3
        assert mask.any(), "no valid depth in batch"  # gt: sync medium
        pred = pred.clamp(min=1e-3)
        target = target.clamp(min=1e-3)
        d = torch.log(pred[mask]) - torch.log(target[mask])  # gt: sync medium
        return torch.sqrt((d ** 2).mean() - self.variance_focus * d.mean() ** 2) * 10.0


def synthetic_scene(rng, h=48, w=64):
    """A ground plane plus a few boxes; sparse 'LiDAR' depth as the target."""
    rows = np.arange(h, dtype=np.float32)[:, None]
    depth = np.broadcast_to(np.clip(400.0 / (rows - h / 2 + 1.0).clip(min=1.0), 1.0, MAX_DEPTH), (h, w)).copy()
    for _ in range(rng.integers(1, 4)):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w - 8)
        depth[y0:y0 + 10, x0:x0 + 8] = rng.uniform(5, 40)
    img = np.stack([depth / MAX_DEPTH + rng.normal(0, 0.05, (h, w)) for _ in range(3)]).astype(np.float32)
    sparse = np.where(rng.uniform(size=(h, w)) < 0.3, depth, 0.0).astype(np.float32)
    return img, sparse[None]


def evaluate_batch(pred, gt):
    pred_np = pred.detach().cpu().numpy()  # gt: sync medium metrics
    gt_np = gt.cpu().numpy()  # gt: sync medium metrics
    return depth_metrics(pred_np, gt_np)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--iters-per-epoch", type=int, default=8)
    ap.add_argument("--bs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(4)
    rng = np.random.default_rng(4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = DepthNet().to(device)
    criterion = SILogLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)  # gt: optimizer medium
    depth_cap = torch.tensor(np.percentile(rng.uniform(1, MAX_DEPTH, 1000), 99)).item()  # trap: sync numpy-born tensor
    for epoch in range(args.epochs):
        for it in range(args.iters_per_epoch):
            batch = [synthetic_scene(rng) for _ in range(args.bs)]
            img = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
            gt = torch.from_numpy(np.stack([b[1] for b in batch])).clamp(max=depth_cap).to(device)
            pred = model(img)
            loss = criterion(pred, gt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
            m = evaluate_batch(pred, gt)
            print(f"epoch {epoch} iter {it} loss {loss.item():.6f} a1 {m['a1']:.3f} abs_rel {m['abs_rel']:.3f}")  # gt: sync medium


if __name__ == "__main__":
    main()
