"""VoteNet-style point-based 3D detector on synthetic indoor-like scenes: PointNet++ backbone (pure-PyTorch
ops), Hough voting, proposal clustering, objectness / box / semantic losses."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn

from losses import votenet_loss
from model import VoteNet

NUM_POINTS, MAX_BOXES, CLASSES, HEADING_BINS = 1024, 8, 4, 6


class VoteScenes(torch.utils.data.Dataset):
    """Points on the surfaces of a few oriented boxes plus clutter; vote targets computed per box on the host."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        rng = np.random.default_rng(2024 + i)
        n_boxes = int(rng.integers(2, MAX_BOXES))
        centers = np.zeros((MAX_BOXES, 3), np.float32)
        heading = np.zeros(MAX_BOXES, np.float32)
        size_cls = np.zeros(MAX_BOXES, np.int64)
        valid = np.zeros(MAX_BOXES, bool)
        centers[:n_boxes] = rng.uniform([-4, -4, 0.3], [4, 4, 1.0], (n_boxes, 3))
        heading[:n_boxes] = rng.uniform(-math.pi, math.pi, n_boxes)
        size_cls[:n_boxes] = rng.integers(0, CLASSES, n_boxes)
        valid[:n_boxes] = True
        sizes = 0.4 + 0.3 * size_cls[:, None] + np.zeros((MAX_BOXES, 3), np.float32)
        xyz = rng.uniform([-5, -5, 0], [5, 5, 2], (NUM_POINTS, 3)).astype(np.float32)
        per_box = NUM_POINTS // (2 * MAX_BOXES)
        for k in range(n_boxes):  # trap: small_op_loop surface sampling per box in numpy
            local = rng.uniform(-0.5, 0.5, (per_box, 3)) * sizes[k]
            c, s = math.cos(heading[k]), math.sin(heading[k])
            xyz[k * per_box:(k + 1) * per_box] = local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + centers[k]
        vote_target = np.zeros((NUM_POINTS, 3), np.float32)
        vote_mask = np.zeros(NUM_POINTS, bool)
        point_sem = np.full(NUM_POINTS, CLASSES, np.int64)                   # CLASSES = background
        for k in np.flatnonzero(valid):  # trap: any points-in-box in numpy, in the dataset: host data code
            c, s = math.cos(heading[k]), math.sin(heading[k])
            local = (xyz - centers[k]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
            inside = (np.abs(local) <= sizes[k] / 2 + 1e-3).all(1)
            vote_target[inside] = centers[k] - xyz[inside]
            vote_mask |= inside
            point_sem[inside] = size_cls[k]
        points = np.concatenate([xyz, rng.uniform(0, 1, (NUM_POINTS, 1))], 1).astype(np.float32)
        return {"points": torch.from_numpy(points), "centers": torch.from_numpy(centers),
                "heading": torch.from_numpy(heading), "size_cls": torch.from_numpy(size_cls),
                "valid": torch.from_numpy(valid), "vote_target": torch.from_numpy(vote_target),
                "vote_mask": torch.from_numpy(vote_mask), "point_sem": torch.from_numpy(point_sem)}


def set_bn_momentum(model, epoch, init=0.5, decay=0.5, every=20, floor=0.001):
    momentum = max(init * decay ** (epoch // every), floor)
    for m in model.modules():  # trap: small_op_loop BN momentum schedule, host attributes only
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.momentum = momentum


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(12)
    device = torch.device("npu" if hasattr(torch, "npu") and torch.npu.is_available() else "cpu")
    model = VoteNet(CLASSES + 1, HEADING_BINS).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # gt: optimizer medium
    loader = torch.utils.data.DataLoader(VoteScenes(), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    step = 0
    for epoch in range(args.epochs):
        set_bn_momentum(model, epoch)
        for batch in loader:  # trap: sync DataLoader iteration runs on the host
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(batch["points"])
            loss, num_pos = votenet_loss(out, batch, HEADING_BINS, CLASSES + 1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync Adam step counters are host tensors
            print(f"epoch {epoch} step {step} loss {loss.item():.6f} positives {num_pos}")  # gt: sync medium
            step += 1


if __name__ == "__main__":
    main()
