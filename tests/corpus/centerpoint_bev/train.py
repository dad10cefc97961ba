"""CenterPoint-style BEV detector trained on synthetic pillar images.

BEV pseudo-image -> small ResNet-like backbone -> CenterHead (heatmap, offset, height, size, yaw).
Targets are assigned on the training device, per sample and per object, the way the mmdet3d
CenterHead does it.
"""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from targets import get_targets_single

CFG = dict(grid=(32, 32), num_classes=3, max_objs=16, voxel_size=1.6, pc_range=(-25.6, -25.6, 25.6, 25.6),
           gaussian_overlap=0.1, min_radius=2)


class SyntheticPillars(torch.utils.data.Dataset):
    """Random scenes: objects scattered in the range, rasterized into an occupancy-like BEV image."""

    def __init__(self, length, seed=0):
        self.length = length
        self.seed = seed

    def __len__(self):
        return self.length

    def __getitem__(self, idx):
        rng = np.random.RandomState(self.seed + idx)
        num = rng.randint(6, CFG["max_objs"])
        boxes = np.zeros((CFG["max_objs"], 6), np.float32)
        labels = np.zeros(CFG["max_objs"], np.int64)
        image = np.zeros((8, *CFG["grid"]), np.float32)
        for i in range(num):  # trap: small_op_loop host-side scene generation in numpy
            boxes[i, :2] = rng.uniform(-22.0, 22.0, 2)
            boxes[i, 2] = rng.uniform(-1.0, 1.0)
            boxes[i, 3:5] = rng.uniform(1.5, 4.5, 2)
            boxes[i, 5] = rng.uniform(-np.pi, np.pi)
            labels[i] = rng.randint(CFG["num_classes"])
            cx = int((boxes[i, 0] + 25.6) / CFG["voxel_size"])
            cy = int((boxes[i, 1] + 25.6) / CFG["voxel_size"])
            image[labels[i], cy, cx] = 1.0
        image += rng.normal(0, 0.1, image.shape).astype(np.float32)
        return torch.from_numpy(image), torch.from_numpy(boxes), torch.from_numpy(labels), num


class ResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)  # gt: fused_op low add-relu


class CenterHead(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({
            "heatmap": nn.Conv2d(32, num_classes, 1),
            "reg": nn.Conv2d(32, 2, 1),
            "height": nn.Conv2d(32, 1, 1),
            "dim": nn.Conv2d(32, 2, 1),
            "rot": nn.Conv2d(32, 1, 1),
        })
        self.heads["heatmap"].bias.data.fill_(-2.19)

    def forward(self, x):
        x = self.shared(x)
        return {name: head(x) for name, head in self.heads.items()}


class CenterPointLite(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(ResBlock(32), ResBlock(32))
        self.head = CenterHead(32, CFG["num_classes"])

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def gaussian_focal_loss(pred, target, alpha=2.0, gamma=4.0):
    pred = pred.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = -(pred.log() * (1 - pred).pow(alpha) * pos)
    neg_loss = -((1 - pred).log() * pred.pow(alpha) * (1 - target).pow(gamma) * neg)
    return (pos_loss + neg_loss).sum() / pos.sum().clamp(min=1)


def loss_fn(preds, gt_boxes, gt_labels, num_objs):
    heatmaps, boxes, inds, masks = [], [], [], []
    for b in range(gt_boxes.shape[0]):  # gt: fused_op high gauss; small_op_loop high gauss
        heat, box, ind, mask = get_targets_single(gt_boxes[b], gt_labels[b], num_objs[b], CFG)
        heatmaps.append(heat)
        boxes.append(box)
        inds.append(ind)
        masks.append(mask)
    heatmap, anno_box, ind, mask = map(torch.stack, (heatmaps, boxes, inds, masks))
    loss_heat = gaussian_focal_loss(preds["heatmap"], heatmap)
    reg = torch.cat([preds["reg"], preds["height"], preds["dim"], preds["rot"]], 1)
    reg = reg.flatten(2).transpose(1, 2)
    pred_box = reg.gather(1, ind[..., None].expand(-1, -1, reg.shape[-1]))
    m = mask[..., None].float()
    num = m.sum()
    loss_box = (F.l1_loss(pred_box * m, anno_box * m, reduction="sum")) / (num + 1e-4)
    return loss_heat + 0.25 * loss_box


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=12)
    args = parser.parse_args()

    torch.manual_seed(0)
    if hasattr(torch, "npu") and torch.npu.is_available():
        device = torch.device("npu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")

    loader = torch.utils.data.DataLoader(SyntheticPillars(args.samples), batch_size=args.batch_size, shuffle=False)
    model = CenterPointLite().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)  # gt: optimizer medium
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(loader))
    step = 0
    for epoch in range(args.epochs):
        model.train()
        for image, gt_boxes, gt_labels, num_objs in loader:
            image, gt_boxes, gt_labels = image.to(device), gt_boxes.to(device), gt_labels.to(device)
            num_objs = num_objs.to(device)
            preds = model(image)
            loss = loss_fn(preds, gt_boxes, gt_labels, num_objs)
            print(f"epoch {epoch} step {step} loss {loss.item():.6f} lr {scheduler.get_last_lr()[0]:.2e}")  # gt: sync medium
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            scheduler.step()  # trap: sync scheduler bookkeeping is host-side
            step += 1


if __name__ == "__main__":
    main()
