"""Dense BEV detection head (anchor-free, one box per BEV cell) with focal loss, on synthetic BEV
feature maps; the training loop keeps the usual CUDA niceties (cudnn autotuning, pinned memory)."""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn

from losses import FocalLoss, bev_giou

CLASSES, GRID, CH = 4, 24, 32


class BEVScenes(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        rng = np.random.default_rng(900 + i)
        feat = rng.standard_normal((CH, GRID, GRID)).astype(np.float32)
        labels = np.full((GRID, GRID), CLASSES, np.int64)
        boxes = np.zeros((GRID, GRID, 4), np.float32)
        for _ in range(rng.integers(3, 8)):
            y, x = rng.integers(0, GRID, 2)
            labels[y, x] = rng.integers(0, CLASSES)
            boxes[y, x] = (x + rng.uniform(), y + rng.uniform(), rng.uniform(1, 3), rng.uniform(2, 5))
        return torch.from_numpy(feat), torch.from_numpy(labels), torch.from_numpy(boxes)


class DenseHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(CH, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.cls = nn.Conv2d(64, CLASSES, 1)
        self.reg = nn.Conv2d(64, 4, 1)
        nn.init.constant_(self.cls.bias, -4.595)       # prior probability 0.01 (RetinaNet)

    def forward(self, x):
        h = self.stem(x)
        return self.cls(h), self.reg(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(23)
    torch.backends.cudnn.benchmark = True  # trap: migration harmless on an NPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(BEVScenes(), batch_size=args.batch_size,
                                         pin_memory=torch.cuda.is_available())  # trap: migration pinned memory only when CUDA is present
    model = DenseHead().to(device)
    focal = FocalLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)  # gt: optimizer medium
    for epoch in range(args.epochs):
        tic = time.time()
        for it, (feat, labels, boxes) in enumerate(loader):
            feat, labels, boxes = feat.to(device), labels.to(device), boxes.to(device)
            cls, reg = model(feat)
            cls = cls.permute(0, 2, 3, 1).reshape(-1, CLASSES)
            reg = reg.permute(0, 2, 3, 1).reshape(-1, 4)
            labels, boxes = labels.reshape(-1), boxes.reshape(-1, 4)
            pos = labels < CLASSES
            num_pos = pos.sum().clamp(min=1).float()
            loss_cls = focal(cls, labels, num_pos)
            pred_boxes = torch.cat([reg[:, :2], reg[:, 2:].clamp(max=4).exp()], -1)
            giou = bev_giou(pred_boxes, boxes.clamp(min=1e-3))
            loss_box = ((1 - giou) * pos).sum() / num_pos
            loss = loss_cls + 2.0 * loss_box
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            print(f"epoch {epoch} iter {it} loss {loss.item():.6f} ({time.time() - tic:.2f}s)")  # gt: sync medium


if __name__ == "__main__":
    main()
