"""Camera-to-3D semantic occupancy (a tiny SurroundOcc / MonoScene-like model) on synthetic voxels."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses import IGNORE, balanced_ce, scene_class_affinity

NUM_CLASSES = 6
VOX = (16, 16, 4)


class OccupancyScenes(torch.utils.data.Dataset):
    def __init__(self, n, seed=21):
        self.n = n
        self.seed = seed
        # class frequencies of the whole (synthetic) dataset, computed once on the host
        labels = torch.from_numpy(np.random.default_rng(seed).integers(0, NUM_CLASSES, 4096))
        freq = torch.bincount(labels, minlength=NUM_CLASSES).float()
        self.class_freq = (freq.sum() / freq).sqrt() / (freq.sum() / freq).sqrt().mean()

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(self.seed + i)
        imgs = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
        occ = rng.integers(0, NUM_CLASSES, VOX).astype(np.int64)
        occ[rng.uniform(size=VOX) < 0.1] = IGNORE
        return torch.from_numpy(imgs), torch.from_numpy(occ)


class ConvBlock3D(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv3d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c)
        self.conv2 = nn.Conv3d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        y += x  # gt: fused_op low add-relu
        return F.relu(y)


class OccNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.img_enc = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.lift = nn.Linear(2 * 32 * 8 * 8, c * 4 * 4 * 2)
        self.decoder = nn.Sequential(ConvBlock3D(c), nn.Upsample(size=VOX, mode="trilinear"), ConvBlock3D(c))
        self.cls = nn.Conv3d(c, NUM_CLASSES, 1)
        self.c = c

    def forward(self, imgs):
        b = imgs.shape[0]
        f = self.img_enc(imgs.flatten(0, 1)).view(b, -1)
        vol = self.lift(f).view(b, self.c, 4, 4, 2)
        return self.cls(self.decoder(vol))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--print-freq", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(3)
    device = torch.device("npu" if getattr(torch, "npu", None) is not None and torch.npu.is_available() else "cpu")
    data = OccupancyScenes(8)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=False, drop_last=True)
    model = OccNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # gt: optimizer medium
    global_step = 0
    for epoch in range(args.epochs):
        running = torch.zeros((), device=device)
        for imgs, occ in loader:  # trap: sync DataLoader internals run on the host
            imgs, occ = imgs.to(device, non_blocking=True), occ.to(device, non_blocking=True)
            logits = model(imgs)
            loss_ce = balanced_ce(logits, occ, data.class_freq)
            loss_scal = scene_class_affinity(logits, occ, NUM_CLASSES)
            loss = loss_ce + 0.5 * loss_scal
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            running += loss.detach()
            global_step += 1
            if global_step % args.print_freq == 0:
                print(f"epoch {epoch} it {global_step} loss {loss:.6f}")  # gt: sync medium
        epoch_loss = running / len(loader)
        # one host read per epoch for the log line
        print(f"epoch {epoch} mean loss {epoch_loss.item():.6f}")  # trap: sync once per epoch


if __name__ == "__main__":
    main()
