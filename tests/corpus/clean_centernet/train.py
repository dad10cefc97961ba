"""CenterNet-style 2D detector written with the usual performance hygiene: targets are rendered on the
host in the data pipeline, the loss is fully vectorized, logging reads the device every 20 steps."""
import argparse
import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    import torch_npu  # noqa: F401
    from torch_npu.optim import NpuFusedAdamW as AdamW
except ImportError:
    AdamW = functools.partial(torch.optim.AdamW, foreach=True)

OUT, CLASSES, MAX_OBJ = 32, 3, 12


def render_targets(boxes, labels):
    """Gaussian heatmaps, centre indices and sizes for one image (numpy, vectorized over the grid)."""
    heat = np.zeros((CLASSES, OUT, OUT), np.float32)
    ind = np.zeros(MAX_OBJ, np.int64)
    wh = np.zeros((MAX_OBJ, 2), np.float32)
    mask = np.zeros(MAX_OBJ, np.float32)
    ys, xs = np.mgrid[0:OUT, 0:OUT]
    for k, (box, c) in enumerate(zip(boxes, labels)):  # trap: small_op_loop numpy work in the data pipeline
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        w, h = box[2] - box[0], box[3] - box[1]
        sigma = max(w, h) / 6 + 0.5
        g = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        heat[c] = np.maximum(heat[c], g)
        ind[k], wh[k], mask[k] = int(cy) * OUT + int(cx), (w, h), 1.0
    return heat, ind, wh, mask


class Scenes(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        rng = np.random.default_rng(100 + i)
        n = int(rng.integers(2, MAX_OBJ))
        xy = rng.uniform(0, OUT - 8, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(3, 8, (n, 2))], 1)
        labels = rng.integers(0, CLASSES, n)
        heat, ind, wh, mask = render_targets(boxes, labels)
        img = rng.standard_normal((3, OUT * 4, OUT * 4)).astype(np.float32)
        return tuple(torch.from_numpy(a) for a in (img, heat, ind, wh, mask))


class Neck(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU())
                                     for c_in, c_out in ((3, 16), (16, 32), (32, 48))])
        self.lateral = nn.ModuleList([nn.Conv2d(c, 32, 1) for c in (16, 32, 48)])

    def forward(self, x):
        feats = []
        for stage in self.stages:  # trap: small_op_loop three stages, one big conv each
            x = stage(x)
            feats.append(x)
        out = self.lateral[2](feats[2])
        for lvl in (1, 0):  # trap: small_op_loop top-down pathway over two levels
            out = F.interpolate(out, size=feats[lvl].shape[-2:], mode="nearest") + self.lateral[lvl](feats[lvl])
        return F.interpolate(out, size=(OUT, OUT), mode="bilinear", align_corners=False)


class CenterNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.neck = Neck()
        self.heat = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, CLASSES, 1))
        self.wh = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 2, 1))
        self.heat[-1].bias.data.fill_(-2.19)

    def forward(self, x):
        f = self.neck(x)
        return self.heat(f), self.wh(f)


def focal_loss(logits, target):
    pred = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_term = torch.where(target.eq(1), (1 - pred) ** 2 * pred.log(), torch.zeros_like(pred))  # trap: sync three-argument where
    neg_term = (1 - target) ** 4 * pred ** 2 * (1 - pred).log()
    return -(pos_term.sum() + neg_term.sum()) / pos.sum().clamp(min=1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--log-interval", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(21)
    device = torch.device("npu" if hasattr(torch, "npu") and torch.npu.is_available() else "cpu")
    model = CenterNet().to(device)
    optimizer = AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)  # trap: optimizer fused on the NPU, foreach elsewhere
    loader = torch.utils.data.DataLoader(Scenes(), batch_size=args.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    history = []
    for epoch in range(args.epochs):
        for step, (img, heat, ind, wh, mask) in enumerate(loader):  # trap: sync shuffling happens on the host
            img, heat, ind = img.to(device, non_blocking=True), heat.to(device, non_blocking=True), ind.to(device)
            wh, mask = wh.to(device), mask.to(device)
            heat_logits, wh_pred = model(img)
            pred_wh = wh_pred.flatten(2).gather(2, ind[:, None].expand(-1, 2, -1)).transpose(1, 2)
            loss_wh = (F.l1_loss(pred_wh, wh, reduction="none").sum(-1) * mask).sum() / mask.sum().clamp(min=1)
            loss = focal_loss(heat_logits, heat) + 0.1 * loss_wh
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()  # trap: sync optimizer bookkeeping lives on the host
            history.append(loss.detach())
            if step % args.log_interval == 0:
                print(f"epoch {epoch} step {step} loss {loss.item():.6f}")  # trap: sync every 20 steps
        losses = torch.stack(history).cpu().tolist()  # trap: sync once per epoch, after the loop
        print("epoch", epoch, "loss", " ".join(f"{v:.6f}" for v in losses))


if __name__ == "__main__":
    main()
