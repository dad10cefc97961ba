"""HDMapNet-style BEV map segmentation from a LiDAR pseudo-image: a small U-Net predicts semantic masks
(lane divider, ped crossing, boundary, drivable...) and instance embeddings."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses import discriminative_loss, soft_dice_loss

CLASSES, EMBED, GRID = 6, 8, 64
CLASS_WEIGHTS = [1.0, 2.0, 2.0, 1.5, 1.0, 0.5]


class MapTiles(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        rng = np.random.default_rng(2024 + i)
        sem = np.zeros((CLASSES, GRID, GRID), np.float32)
        inst = np.zeros((GRID, GRID), np.int64)
        for k in range(rng.integers(3, 7)):  # trap: small_op_loop polylines rasterized in numpy
            c = rng.integers(0, CLASSES - 1)
            x0, x1 = sorted(rng.integers(0, GRID, 2))
            y = rng.integers(2, GRID - 2)
            sem[c, y - 1:y + 1, x0:x1 + 1] = 1.0
            inst[y - 1:y + 1, x0:x1 + 1] = k + 1
        sem[CLASSES - 1] = (sem[:CLASSES - 1].sum(0) == 0)
        lidar = (rng.normal(0, 0.3, (5, GRID, GRID)) + sem[:5]).astype(np.float32)
        return torch.from_numpy(lidar), torch.from_numpy(sem), torch.from_numpy(inst)


def conv_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MapUNet(nn.Module):
    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        chans = (5,) + widths
        self.down = nn.ModuleList([conv_block(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.up = nn.ModuleList([conv_block(widths[i] + widths[i + 1], widths[i]) for i in range(len(widths) - 1)])
        self.sem = nn.Conv2d(widths[0], CLASSES, 1)
        self.emb = nn.Conv2d(widths[0], EMBED, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):  # trap: small_op_loop three levels of big convs
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):  # trap: small_op_loop two decoder levels of big convs
            x = self.up[i](torch.cat([skips[i], F.interpolate(x, scale_factor=2.0)], 1))
        return self.sem(x), self.emb(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(MapTiles(), batch_size=2, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))
    model = MapUNet().to(device)
    optimizer = torch.optim.RMSprop(model.parameters(), lr=5e-4, alpha=0.9, momentum=0.9)  # gt: optimizer medium
    weights = torch.tensor(CLASS_WEIGHTS)
    print(f"background weight {weights[-1].item():.2f}")  # trap: sync CPU config tensor
    weights = weights.view(1, -1, 1, 1).to(device)
    ious = torch.zeros(CLASSES)
    for epoch in range(args.epochs):
        for it, (lidar, sem, inst) in enumerate(loader):
            lidar, sem, inst = lidar.to(device), sem.to(device), inst.to(device)
            sem_logits, emb = model(lidar)
            loss_bce = F.binary_cross_entropy_with_logits(sem_logits, sem, weight=weights)
            loss = loss_bce + soft_dice_loss(sem_logits, sem) + 0.1 * discriminative_loss(emb, inst)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync RMSprop keeps its state on the device
            print(f"epoch {epoch} it {it} loss {loss.item():.6f}")  # gt: sync medium
        with torch.no_grad():
            pred = sem_logits.sigmoid() > 0.5
            inter = (pred & (sem > 0)).flatten(2).sum((0, 2)).float()
            union = (pred | (sem > 0)).flatten(2).sum((0, 2)).float()
            ious = (inter / union.clamp(min=1)).cpu()  # trap: sync once per epoch, after the loop
    print("per-class IoU", [round(v, 3) for v in ious.tolist()])  # trap: sync once after training


if __name__ == "__main__":
    main()
