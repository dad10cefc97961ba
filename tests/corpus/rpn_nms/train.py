"""Faster R-CNN-style RPN + RoI head trained end to end on synthetic images; proposals come from NMS
inside the training step."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision_free_roi import roi_pool

from box_ops import decode, greedy_nms, pairwise_iou

IMG, STRIDE, ANCHOR_SIZES = 96, 8, (16.0, 32.0, 48.0)


def grid_anchors(device):
    n = IMG // STRIDE
    shifts = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * STRIDE
    cy, cx = torch.meshgrid(shifts, shifts, indexing="ij")
    centers = torch.stack([cx, cy, cx, cy], -1).view(-1, 1, 4)
    half = torch.tensor([[-s / 2, -s / 2, s / 2, s / 2] for s in ANCHOR_SIZES], device=device)
    return (centers + half[None]).view(-1, 4)


class RPN(nn.Module):
    def __init__(self, c=32):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(32, c, 3, 2, 1), nn.ReLU())
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.obj = nn.Conv2d(c, len(ANCHOR_SIZES), 1)
        self.delta = nn.Conv2d(c, 4 * len(ANCHOR_SIZES), 1)

    def forward(self, img):
        feat = self.backbone(img)
        h = F.relu(self.conv(feat))
        b = img.shape[0]
        obj = self.obj(h).permute(0, 2, 3, 1).reshape(b, -1)
        delta = self.delta(h).permute(0, 2, 3, 1).reshape(b, -1, 4)
        return feat, obj, delta


class RoIHead(nn.Module):
    def __init__(self, c=32, classes=4):
        super().__init__()
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * 4 * 4, 64), nn.ReLU())
        self.cls = nn.Linear(64, classes + 1)

    def forward(self, feat, rois):
        return self.cls(self.fc(roi_pool(feat, rois, 4, 1.0 / STRIDE)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(17)
    rng = np.random.default_rng(17)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rpn, head = RPN().to(device), RoIHead().to(device)
    optimizer = torch.optim.SGD([*rpn.parameters(), *head.parameters()], lr=0.005, momentum=0.9)  # gt: optimizer medium
    anchors = grid_anchors(device)
    for it in range(args.iters):
        img = torch.from_numpy(rng.standard_normal((args.batch_size, 3, IMG, IMG)).astype(np.float32)).to(device)
        gt = [torch.from_numpy(np.concatenate([xy := rng.uniform(0, 60, (3, 2)), xy + rng.uniform(16, 36, (3, 2))], 1)
                               .astype(np.float32)).to(device) for _ in range(args.batch_size)]
        gt_cls = [torch.from_numpy(rng.integers(1, 5, 3)).to(device) for _ in range(args.batch_size)]
        feat, obj, delta = rpn(img)
        rois, roi_labels, rpn_losses = [], [], []
        for b in range(args.batch_size):  # gt: small_op_loop medium per-image
            iou = pairwise_iou(anchors, gt[b])
            obj_target = (iou.max(1).values > 0.5).float()
            rpn_losses.append(F.binary_cross_entropy_with_logits(obj[b], obj_target))
            with torch.no_grad():
                props = decode(anchors, delta[b].detach()).clamp(0, IMG)
                keep = greedy_nms(props, obj[b].detach().sigmoid(), 0.7, 16)
                props = torch.cat([props[keep], gt[b]])
                piou = pairwise_iou(props, gt[b])
                best_iou, best_gt = piou.max(1)
                labels = torch.where(best_iou > 0.5, gt_cls[b][best_gt], torch.zeros_like(best_gt))
            rois.append(torch.cat([props.new_full((len(props), 1), b), props], 1))
            roi_labels.append(labels)
        logits = head(feat, torch.cat(rois))
        loss = torch.stack(rpn_losses).mean() + F.cross_entropy(logits, torch.cat(roi_labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync SGD keeps no device bookkeeping to read
        print(f"iter {it} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
