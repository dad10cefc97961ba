"""FCOS-style anchor-free detector with a deformable-conv tower, on synthetic images."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcn import ModulatedDeformConv

STRIDES = (8, 16, 32)
REGRESS_RANGES = ((-1, 32), (32, 64), (64, 1e8))
IMG, CLASSES = 128, 3


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.c3 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.c4 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.c5 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        c3 = self.c3(x)
        c4 = self.c4(c3)
        return [c3, c4, self.c5(c4)]


class FCOSHead(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.tower = nn.Sequential(ModulatedDeformConv(c, c), nn.GroupNorm(8, c), nn.ReLU())
        self.cls = nn.Conv2d(c, CLASSES, 3, padding=1)
        self.reg = nn.Conv2d(c, 4, 3, padding=1)
        self.ctr = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))

    def forward(self, feats):
        outs = []
        for i, f in enumerate(feats):  # trap: small_op_loop one tower pass per level
            t = self.tower(f)
            outs.append((self.cls(t), (self.scales[i] * self.reg(t)).exp(), self.ctr(t)))
        return outs


def level_points(feats):
    points = []
    for f, s in zip(feats, STRIDES):  # trap: small_op_loop three levels, a handful of ops each
        h, w = f.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=f.device), torch.arange(w, device=f.device), indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() * s + s // 2)
    return points


def fcos_targets(points, gt_boxes, gt_labels):
    """Per point: class (0 = background) and ltrb distances to its smallest enclosing box."""
    all_pts = torch.cat(points)
    ranges = torch.cat([all_pts.new_tensor(r).expand(len(p), 2) for p, r in zip(points, REGRESS_RANGES)])  # gt: small_op_loop low
    xs, ys = all_pts[:, 0:1], all_pts[:, 1:2]
    ltrb = torch.stack([xs - gt_boxes[:, 0], ys - gt_boxes[:, 1], gt_boxes[:, 2] - xs, gt_boxes[:, 3] - ys], -1)
    inside = ltrb.min(-1).values > 0
    max_reg = ltrb.max(-1).values
    in_range = (max_reg >= ranges[:, :1]) & (max_reg <= ranges[:, 1:])
    areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand(len(all_pts), -1)
    areas = areas.masked_fill(~(inside & in_range), float("inf"))  # trap: sync masked_fill is a write
    min_area, idx = areas.min(1)
    labels = gt_labels[idx].masked_fill(min_area == float("inf"), 0)
    return labels, ltrb[torch.arange(len(all_pts), device=all_pts.device), idx]


def iou_loss(pred, target):
    area_p = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    area_t = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter = (torch.min(pred[:, 0], target[:, 0]) + torch.min(pred[:, 2], target[:, 2])) * \
            (torch.min(pred[:, 1], target[:, 1]) + torch.min(pred[:, 3], target[:, 3]))
    return -torch.log((inter + 1) / (area_p + area_t - inter + 1)).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(18)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, head = Backbone().to(device), FCOSHead().to(device)
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.002, momentum=0.9,
                                weight_decay=1e-4, foreach=True)  # trap: optimizer multi-tensor SGD (foreach)
    g = torch.Generator().manual_seed(18)
    for it in range(args.iters):
        img = torch.randn(args.batch_size, 3, IMG, IMG, generator=g)
        xy = torch.rand(args.batch_size, 3, 2, generator=g) * 80
        boxes = torch.cat([xy, xy + 16 + torch.rand(args.batch_size, 3, 2, generator=g) * 40], -1)
        labels = torch.randint(1, CLASSES + 1, (args.batch_size, 3), generator=g)
        img, boxes, labels = img.to(device), boxes.to(device), labels.to(device)
        feats = backbone(img)
        outs = head(feats)
        points = level_points(feats)
        cls = torch.cat([o[0].flatten(2) for o in outs], 2).transpose(1, 2)
        reg = torch.cat([o[1].flatten(2) for o in outs], 2).transpose(1, 2)
        targets = [fcos_targets(points, boxes[b], labels[b]) for b in range(args.batch_size)]  # gt: small_op_loop low
        cls_t = torch.stack([t[0] for t in targets])
        reg_t = torch.stack([t[1] for t in targets])
        pos = cls_t > 0
        num_pos = max(pos.sum().item(), 1.0)  # gt: sync medium
        loss_cls = F.binary_cross_entropy_with_logits(cls, F.one_hot(cls_t, CLASSES + 1)[..., 1:].float(),  # trap: sync one_hot with num_classes reads no values on the NPU
                                                      reduction="sum") / num_pos
        loss_reg = iou_loss(reg[pos], reg_t[pos])  # gt: sync medium
        loss = loss_cls + loss_reg
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"iter {it} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
