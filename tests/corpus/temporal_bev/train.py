"""Temporal BEV fusion: the previous frame's BEV features are warped into the current ego frame and
fused with the current ones (BEVFormer / BEVDet4D style), on a synthetic ego trajectory."""
import argparse
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ego_motion import align_history, relative_pose

BEV, C, RANGE = 24, 32, 30.0


def ego_pose(t):
    yaw = 0.05 * t
    pose = torch.eye(4)
    pose[:2, :2] = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    pose[0, 3], pose[1, 3] = 2.0 * t, 0.1 * t * t
    return pose


class BEVEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(8, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(inplace=True),
                                 nn.Conv2d(C, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.net(x)


class TemporalFusion(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = BEVEncoder()
        self.fuse = nn.Conv2d(2 * C, C, 3, padding=1)
        self.head = nn.Conv2d(C, 2, 1)

    def forward(self, frames, poses):
        prev = None
        outputs = []
        for t in range(frames.shape[1]):  # trap: small_op_loop each frame needs the fused previous one
            cur = self.encoder(frames[:, t])
            if prev is not None:
                rel = relative_pose(poses[:, t - 1], poses[:, t])
                warped = align_history(prev, rel, RANGE)
                cur = F.relu(self.fuse(torch.cat([cur, warped], 1)))
            outputs.append(self.head(cur))
            prev = cur.detach()
        return outputs


def spectral_regularizer(model):
    """Keep the fusion conv close to an isometry: penalize the spread of its singular values."""
    w = model.fuse.weight.flatten(1)
    s = torch.linalg.svdvals(w)  # trap: cpu_fallback svd has an NPU kernel; gt: sync low
    return (s.max() / s.min().clamp(min=1e-3)).log()  # trap: sync reductions stay on the device


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(14)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = TemporalFusion().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)  # gt: optimizer medium
    g = torch.Generator().manual_seed(14)
    for it in range(args.iters):
        frames = torch.randn(args.batch_size, args.frames, 8, BEV, BEV, generator=g).to(device)
        poses = torch.stack([torch.stack([ego_pose(it + t + b) for t in range(args.frames)])  # trap: small_op_loop ego poses are built on the host
                             for b in range(args.batch_size)]).to(device)
        target = torch.randint(0, 2, (args.batch_size, BEV, BEV), generator=g).to(device)
        outputs = model(frames, poses)
        loss = sum(F.cross_entropy(o, target) for o in outputs) / len(outputs) + 0.01 * spectral_regularizer(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"it {it} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
