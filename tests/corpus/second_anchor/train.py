"""SECOND / PointPillars-style anchor detector on synthetic BEV grids: two rotated anchors per cell,
max-IoU assignment on rotated BEV IoU, focal-free classification, sin-difference box regression, a
direction classifier, an auxiliary point segmentation head and rotated NMS at evaluation."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rotated_iou import rotated_iou_bev
from targets import anchor_targets, foreground_points, limit_period

PC_MIN, PC_MAX, VOXEL = -24.0, 24.0, 0.75
GRID = int((PC_MAX - PC_MIN) / VOXEL)          # 64
STRIDE = 2
ANCHOR_SIZE = (1.6, 3.9, 1.56)                 # w l h of a car
ANCHOR_Z = -1.0
NUM_POINTS = 2048


def synthetic_batch(rng, batch_size):
    """Host side: cars, their surface points and ground points, and a BEV occupancy / height image."""
    bevs, points, boxes = [], [], []
    for _ in range(batch_size):  # trap: small_op_loop scenes built in numpy
        n = int(rng.integers(2, 6))  # trap: sync numpy integer
        b = np.concatenate([rng.uniform(-20, 20, (n, 2)), np.full((n, 1), ANCHOR_Z),
                            rng.uniform([1.5, 3.6, 1.4], [1.8, 4.4, 1.7], (n, 3)), rng.uniform(-math.pi, math.pi, (n, 1))], 1)
        obj = [bx[:3] + rng.uniform(-0.5, 0.5, (200, 3)) * bx[[4, 3, 5]] for bx in b]  # trap: small_op_loop numpy per object
        pts = np.concatenate([np.concatenate([rng.uniform(PC_MIN, PC_MAX, (NUM_POINTS - 200 * n, 2)),
                                              np.full((NUM_POINTS - 200 * n, 1), -1.8)], 1)] + obj)
        ij = np.clip(((pts[:, :2] - PC_MIN) / VOXEL).astype(np.int64), 0, GRID - 1)
        bev = np.zeros((2, GRID, GRID), np.float32)
        np.add.at(bev[0], (ij[:, 1], ij[:, 0]), 1.0)
        np.maximum.at(bev[1], (ij[:, 1], ij[:, 0]), pts[:, 2] + 3)
        bevs.append(bev)
        points.append(pts.astype(np.float32))
        boxes.append(torch.from_numpy(b.astype(np.float32)))
    return torch.from_numpy(np.stack(bevs)), torch.from_numpy(np.stack(points)), boxes


def make_anchors(device):
    size = GRID // STRIDE
    centers = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * VOXEL * STRIDE + PC_MIN
    ys, xs = torch.meshgrid(centers, centers, indexing="ij")
    rot = torch.tensor([0.0, math.pi / 2], device=device)
    xyz = torch.stack([xs, ys, torch.full_like(xs, ANCHOR_Z)], -1)[:, :, None].expand(size, size, 2, 3)
    dims = torch.tensor(ANCHOR_SIZE, device=device).expand(size, size, 2, 3)
    return torch.cat([xyz, dims, rot.view(1, 1, 2, 1).expand(size, size, 2, 1)], -1).reshape(-1, 7)


class SECONDLite(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(2, c, 3, STRIDE, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU(),
                                      nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.cls = nn.Conv2d(c, 2, 1)
        self.reg = nn.Conv2d(c, 2 * 7, 1)
        self.dir = nn.Conv2d(c, 2 * 2, 1)
        self.seg = nn.Sequential(nn.Linear(c + 3, c), nn.ReLU(), nn.Linear(c, 1))
        nn.init.constant_(self.cls.bias, -4.6)

    def forward(self, bev, points):
        x = self.backbone(bev)
        bs = x.shape[0]
        cls = self.cls(x).permute(0, 2, 3, 1).reshape(bs, -1)
        reg = self.reg(x).permute(0, 2, 3, 1).reshape(bs, -1, 7)
        dirs = self.dir(x).permute(0, 2, 3, 1).reshape(bs, -1, 2)
        # auxiliary head: each point reads the BEV feature of its cell
        grid = (points[..., :2] - PC_MIN) / (PC_MAX - PC_MIN) * 2 - 1
        point_feat = F.grid_sample(x, grid[:, :, None], align_corners=False)[..., 0].transpose(1, 2)
        seg = self.seg(torch.cat([point_feat, points], -1)).squeeze(-1)
        return cls, reg, dirs, seg


def add_sin_difference(pred, target):
    rad_pred = torch.sin(pred[..., 6:7]) * torch.cos(target[..., 6:7])
    rad_tgt = torch.cos(pred[..., 6:7]) * torch.sin(target[..., 6:7])
    return torch.cat([pred[..., :6], rad_pred], -1), torch.cat([target[..., :6], rad_tgt], -1)


def detection_loss(outputs, anchors, points, gt_boxes):
    cls, reg, dirs, seg = outputs
    labels, box_targets, dir_targets = anchor_targets(anchors, gt_boxes)
    pos = labels > 0
    weights = (labels >= 0).float()
    num_pos = pos.sum().clamp(min=1).float()  # trap: sync normalizer stays on the device
    loss_cls = (F.binary_cross_entropy_with_logits(cls, pos.float(), reduction="none", pos_weight=cls.new_tensor(4.0))
                * weights).sum() / num_pos
    p, t = add_sin_difference(reg, box_targets)
    loss_box = (F.smooth_l1_loss(p, t, beta=1.0 / 9, reduction="none").sum(-1) * pos).sum() / num_pos
    loss_dir = (F.cross_entropy(dirs.flatten(0, 1), dir_targets.flatten(), reduction="none") * pos.flatten()).sum() / num_pos
    fg = torch.stack([foreground_points(pts, boxes) for pts, boxes in zip(points, gt_boxes)])  # gt: small_op_loop low
    loss_seg = F.binary_cross_entropy_with_logits(seg, fg.float(), pos_weight=seg.new_tensor(3.0))
    return loss_cls + 2.0 * loss_box + 0.2 * loss_dir + 0.5 * loss_seg


def decode(reg, anchors):
    xa, ya, za, wa, la, ha, ra = torch.split(anchors, 1, dim=-1)
    diagonal = torch.sqrt(la ** 2 + wa ** 2)
    xt, yt, zt, wt, lt, ht, rt = torch.split(reg, 1, dim=-1)
    return torch.cat([xt * diagonal + xa, yt * diagonal + ya, zt * ha + za, wt.exp() * wa, lt.exp() * la,
                      ht.exp() * ha, rt + ra], -1)


@torch.no_grad()
def rotated_nms(boxes, scores, iou_thr=0.1, max_out=20):
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0 and len(keep) < max_out:  # gt: fused_op low nms; small_op_loop low nms
        i = order[0]
        keep.append(i.item())  # gt: sync low nms
        if order.numel() == 1:
            break
        ious = rotated_iou_bev(boxes[i:i + 1, [0, 1, 3, 4, 6]], boxes[order[1:]][:, [0, 1, 3, 4, 6]])[0]
        order = order[1:][ious <= iou_thr]
    return keep


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SECONDLite().to(device)
    anchors = make_anchors(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.95, 0.99), weight_decay=0.01)  # gt: optimizer medium
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iters)
    for it in range(args.iters):
        bev, points, gt_boxes = synthetic_batch(rng, args.batch_size)
        bev, points = bev.to(device), points.to(device)
        gt_boxes = [b.to(device) for b in gt_boxes]
        loss = detection_loss(model(bev, points), anchors, points, gt_boxes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        scheduler.step()  # trap: sync the LR schedule is host arithmetic
        print("iter", it, "loss", round(float(loss.detach()), 5))  # gt: sync medium
    # evaluation on one more scene after training
    model.eval()
    bev, points, _ = synthetic_batch(rng, 1)
    cls, reg, dirs, _ = model(bev.to(device), points.to(device))
    boxes = decode(reg[0], anchors)
    flip = (dirs[0].argmax(-1) == 1) ^ (limit_period(boxes[:, 6], 0, 2 * math.pi) >= math.pi)
    boxes[:, 6] = boxes[:, 6] + flip.float() * math.pi  # trap: sync masked arithmetic, no read
    scores = cls[0].sigmoid()
    top = scores.topk(100).indices  # trap: sync topk with a fixed k needs no read
    keep = rotated_nms(boxes[top], scores[top])
    print(f"kept {len(keep)} boxes after NMS")


if __name__ == "__main__":
    main()
