"""CenterFormer / TransFusion-style LiDAR detector on synthetic point clouds: dynamic pillars, a BEV
backbone, a class heatmap whose top peaks initialise the object queries, a deformable query decoder and
targets assigned by the GT centre cell each query sits on."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from decoder import QueryDecoder
from iou import aligned_bev_iou
from pillars import DynamicPillarEncoder

PC_RANGE = (-32.0, -32.0, -3.0, 32.0, 32.0, 1.0)
VOXEL = 1.0
GRID = (64, 64)
STRIDE = 2
CLASSES = 3
NUM_QUERIES = 16
MAX_POINTS, MAX_OBJS = 3000, 8


class SyntheticSweeps(Dataset):
    """Boxes on the ground with points sampled on their surfaces plus ground clutter; padded to MAX_POINTS."""

    def __init__(self, length, seed):
        self.length, self.seed = length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, idx):
        rng = np.random.default_rng(self.seed + idx)
        n_obj = int(rng.integers(2, MAX_OBJS + 1))  # trap: sync numpy integer
        centers = np.concatenate([rng.uniform(-28, 28, (n_obj, 2)), rng.uniform(-1.5, -0.5, (n_obj, 1))], 1)
        dims = rng.uniform([3.5, 1.6, 1.4], [5.0, 2.1, 1.9], (n_obj, 3))
        yaw = rng.uniform(-np.pi, np.pi, (n_obj, 1))
        pts = [np.concatenate([rng.uniform(-32, 32, (1500, 2)), rng.uniform(-3, -2.5, (1500, 1))], 1)]
        for c, d in zip(centers, dims):  # trap: small_op_loop object points sampled in numpy in the dataset
            pts.append(c + rng.uniform(-0.5, 0.5, (120, 3)) * d)
        pts = np.concatenate(pts)
        pts = np.concatenate([pts, rng.uniform(0, 1, (len(pts), 1))], 1)[:MAX_POINTS]
        padded = np.zeros((MAX_POINTS, 4), np.float32)
        padded[: len(pts)] = pts
        boxes = np.zeros((MAX_OBJS, 7), np.float32)
        boxes[:n_obj] = np.concatenate([centers, dims, yaw], 1)
        labels = np.zeros(MAX_OBJS, np.int64)
        labels[:n_obj] = rng.integers(0, CLASSES, n_obj)
        return {"points": torch.from_numpy(padded), "num_points": len(pts), "boxes": torch.from_numpy(boxes),
                "labels": torch.from_numpy(labels), "num_objs": n_obj}


class BEVBackbone(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(c, c, 3, STRIDE, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                    nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.heatmap = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU(), nn.Conv2d(c, CLASSES, 1))
        nn.init.constant_(self.heatmap[-1].bias, -2.19)

    def forward(self, x):
        x1 = self.block1(x)
        return [x1, self.block2(x1)], self.heatmap(x1)


def render_heatmap(boxes, labels, valid, hw):
    """All objects' gaussians at once: (B, G) centres against the (H, W) cell grid, max per class."""
    h, w = hw
    cell = VOXEL * STRIDE
    cx = (boxes[..., 0] - PC_RANGE[0]) / cell
    cy = (boxes[..., 1] - PC_RANGE[1]) / cell
    sigma = (torch.hypot(boxes[..., 3], boxes[..., 4]) / cell / 6).clamp(min=0.5)  # gt: cpu_fallback medium
    ys, xs = torch.meshgrid(torch.arange(h, device=boxes.device), torch.arange(w, device=boxes.device), indexing="ij")
    ci, cj = cx.floor() + 0.5, cy.floor() + 0.5
    d2 = (xs + 0.5 - ci[..., None, None]) ** 2 + (ys + 0.5 - cj[..., None, None]) ** 2
    gauss = torch.exp(-d2 / (2 * sigma[..., None, None] ** 2)) * valid[..., None, None]  # trap: fused_op all objects drawn in one broadcast, no per-object launches
    heat = boxes.new_zeros(boxes.shape[0], CLASSES, h * w)
    index = labels[..., None].expand(-1, -1, h * w)
    return heat.scatter_reduce(1, index, gauss.flatten(2), "amax", include_self=True).view(-1, CLASSES, h, w)


def gaussian_focal_loss(pred, target, alpha=2.0, gamma=4.0):
    prob = pred.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -prob.log() * (1 - prob).pow(alpha) * pos
    neg_loss = -(1 - prob).log() * prob.pow(alpha) * (1 - target).pow(gamma) * (1 - pos)
    return (pos_loss + neg_loss).sum() / pos.sum().clamp(min=1)  # trap: sync normalizer stays on the device


def select_queries(heatmap, k, guide=None):
    """Peaks of the class heatmap (3x3 local maxima) -> the k best cells, their class and position. In training
    the GT heatmap is added so that every object gets a query."""
    heat = heatmap.detach().sigmoid()
    if guide is not None:
        heat = heat + guide
    local_max = F.max_pool2d(heat, kernel_size=3, stride=1, padding=1)  # trap: fused_op stride-1 peak pooling, not the k3/s2 kernel
    heat = heat * (heat == local_max)
    bs, c, h, w = heat.shape
    scores, flat = heat.view(bs, -1).topk(k)  # trap: sync topk with a fixed k needs no read
    cls, cell = flat // (h * w), flat % (h * w)
    ref = torch.stack([(cell % w).float() + 0.5, (cell // w).float() + 0.5], -1) / heat.new_tensor([w, h])
    return cls, cell, ref


def assign_and_loss(cls_logits, box_pred, iou_pred, q_cell, ref, hw, gt_boxes, gt_labels, gt_valid):
    h, w = hw
    cell = VOXEL * STRIDE
    gcx = ((gt_boxes[..., 0] - PC_RANGE[0]) / cell).floor().long().clamp(0, w - 1)
    gcy = ((gt_boxes[..., 1] - PC_RANGE[1]) / cell).floor().long().clamp(0, h - 1)
    gt_cell = gcy * w + gcx
    hit = (q_cell[:, :, None] == gt_cell[:, None, :]) & gt_valid[:, None, :]        # (B, K, G)
    matched = hit.any(-1)
    gt_idx = hit.float().argmax(-1)
    tgt_labels = gt_labels.gather(1, gt_idx)
    cls_target = F.one_hot(tgt_labels, CLASSES).float() * matched[..., None]  # trap: sync one_hot with num_classes reads no values
    loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum")
    num_pos = matched.sum().item()  # gt: sync medium
    loss_cls = loss_cls / max(num_pos, 1)
    if num_pos == 0:  # trap: sync num_pos is a Python int already
        return loss_cls, loss_cls.new_zeros(()), loss_cls.new_zeros(())
    tgt = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, gt_boxes.shape[-1]))[matched]  # gt: sync medium
    pred = box_pred[matched]  # gt: sync medium
    pos_ref = ref[matched]  # gt: sync medium
    centre = torch.stack([pos_ref[:, 0] * w * cell + PC_RANGE[0], pos_ref[:, 1] * h * cell + PC_RANGE[1]], -1)
    tgt_enc = torch.cat([(tgt[:, :2] - centre) / cell, tgt[:, 2:3], tgt[:, 3:6].log(), tgt[:, 6:7].sin(), tgt[:, 6:7].cos()], -1)
    loss_box = F.l1_loss(pred, tgt_enc, reduction="sum") / num_pos
    decoded = torch.cat([centre + pred[:, :2] * cell, pred[:, 2:3], pred[:, 3:6].exp(),
                         torch.atan2(pred[:, 6:7], pred[:, 7:8])], -1)  # trap: cpu_fallback atan2 has an NPU kernel
    iou_target = aligned_bev_iou(decoded.detach(), tgt)
    loss_iou = F.binary_cross_entropy_with_logits(iou_pred[matched], iou_target)  # gt: sync medium
    return loss_cls, loss_box, loss_iou


class CenterFormerLite(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = DynamicPillarEncoder(PC_RANGE, VOXEL, GRID)
        self.backbone = BEVBackbone()
        self.decoder = QueryDecoder(32, CLASSES)

    def forward(self, points, num_points, targets=None):
        bev = self.encoder(points, num_points)
        levels, heatmap = self.backbone(bev)
        heat_target = render_heatmap(*targets, heatmap.shape[-2:]) if targets is not None else None
        q_cls, q_cell, ref = select_queries(heatmap, NUM_QUERIES, guide=heat_target)
        query = levels[0].flatten(2).transpose(1, 2).gather(1, q_cell[..., None].expand(-1, -1, levels[0].shape[1]))
        cls_logits, box_pred, iou_pred = self.decoder(query, q_cls, ref, levels)
        return heatmap, heat_target, cls_logits, box_pred, iou_pred, q_cell, ref


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = CenterFormerLite().to(device)
    loader = DataLoader(SyntheticSweeps(16, seed=9), batch_size=2, shuffle=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)  # gt: optimizer medium
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * len(loader))
    for epoch in range(args.epochs):
        for it, batch in enumerate(loader):  # trap: sync DataLoader iteration runs on the host
            points, num_points = batch["points"].to(device), batch["num_points"].to(device)
            gt_boxes, gt_labels = batch["boxes"].to(device), batch["labels"].to(device)
            gt_valid = (torch.arange(MAX_OBJS)[None] < batch["num_objs"][:, None]).to(device)
            heatmap, heat_target, cls_logits, box_pred, iou_pred, q_cell, ref = model(
                points, num_points, targets=(gt_boxes, gt_labels, gt_valid.float()))
            hw = tuple(heatmap.shape[-2:])
            losses = {"heatmap": gaussian_focal_loss(heatmap, heat_target)}
            losses["cls"], losses["box"], losses["iou"] = assign_and_loss(cls_logits, box_pred, iou_pred, q_cell, ref, hw,
                                                                          gt_boxes, gt_labels, gt_valid)
            loss = sum(losses.values())  # trap: sync sum of loss terms stays on the device
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()  # trap: sync Adam step counters are host tensors
            scheduler.step()  # trap: sync the LR schedule is host arithmetic
            log = {k: round(v.item(), 4) for k, v in losses.items()}  # gt: sync medium
            print(f"epoch {epoch} iter {it} loss {sum(log.values()):.4f} {log}")


if __name__ == "__main__":
    main()
