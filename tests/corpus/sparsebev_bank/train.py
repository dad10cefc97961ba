"""SparseBEV / Sparse4D-v3-style temporal detector on synthetic multi-camera sequences: fresh anchors plus
an instance bank carried from frame to frame, Hungarian-matched focal + L1 losses on every decoder layer."""
import argparse
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bank import InstanceBank
from head import SparseBEVHead
from hungarian import linear_sum_assignment

CAMS, FRAMES, EMBED, NUM_ANCHOR, NUM_TEMP, CLASSES = 3, 2, 32, 24, 8, 3
IMG_H, IMG_W = 32, 48
SEQ_LEN = 4


def camera_rig():
    """lidar2img of each camera from intrinsics and a yaw-only extrinsic, computed once in numpy."""
    intr = np.array([[24.0, 0, IMG_W / 2, 0], [0, 24.0, IMG_H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    rig = []
    for c in range(CAMS):  # trap: small_op_loop calibration built in numpy
        yaw = 2 * math.pi * c / CAMS
        cam2lidar = np.eye(4)
        cam2lidar[:3, :3] = np.array([[-math.sin(yaw), 0, math.cos(yaw)], [math.cos(yaw), 0, math.sin(yaw)], [0, -1, 0]])
        cam2lidar[:3, 3] = [0.5 * math.cos(yaw), 0.5 * math.sin(yaw), 1.6]
        rig.append(intr @ np.linalg.inv(cam2lidar))  # trap: cpu_fallback numpy inverse on the host
    return np.stack(rig).astype(np.float32)


def sequence_batches(batch_size, steps, seed):
    """One batch per frame: `batch_size` parallel sequences; a new scene (timestamp jump) every SEQ_LEN frames."""
    rng = np.random.default_rng(seed)
    rig = camera_rig()
    for step in range(steps):
        scene, frame = divmod(step, SEQ_LEN)
        stamps = scene * 100.0 + frame * 0.5 + np.zeros(batch_size)
        history = stamps[:, None] - 0.5 * np.arange(FRAMES)[None]                    # current frame first
        yaw = 0.02 * stamps
        pose = np.tile(np.eye(4), (batch_size, 1, 1))
        pose[:, 0, 0], pose[:, 0, 1], pose[:, 1, 0], pose[:, 1, 1] = np.cos(yaw), -np.sin(yaw), np.sin(yaw), np.cos(yaw)
        pose[:, 0, 3] = 3.0 * stamps
        num_gt = rng.integers(2, 6, size=batch_size)
        gt_boxes = [np.concatenate([rng.uniform(-25, 25, (n, 2)), rng.uniform(-1, 1, (n, 1)), rng.uniform(0, 1.5, (n, 3)),
                                    rng.uniform(-1, 1, (n, 2)), rng.uniform(-2, 2, (n, 2))], 1).astype(np.float32)
                    for n in num_gt]
        yield {
            "imgs": torch.from_numpy(rng.standard_normal((batch_size, FRAMES, CAMS, 3, IMG_H, IMG_W)).astype(np.float32)),
            "lidar2img": torch.from_numpy(np.broadcast_to(rig, (batch_size, FRAMES, CAMS, 4, 4)).copy()),
            "timestamp": torch.from_numpy(stamps.astype(np.float32)),
            "time_deltas": torch.from_numpy((history[:, :1] - history).astype(np.float32)),
            "ego_pose": torch.from_numpy(pose.astype(np.float32)),
            "gt_boxes": [torch.from_numpy(b) for b in gt_boxes],
            "gt_labels": [torch.from_numpy(rng.integers(0, CLASSES, size=n)) for n in num_gt],
        }


class Neck(nn.Module):
    """Two-level image pyramid, flattened into one value tensor as the sampler expects."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.proj = nn.ModuleList([nn.Conv2d(32, EMBED, 1), nn.Conv2d(32, EMBED, 1)])

    def forward(self, imgs):
        c1 = self.stem(imgs)
        c2 = self.down(c1)
        levels = [p(c) for p, c in zip(self.proj, (c1, c2))]  # trap: small_op_loop one conv per level
        level_hw = [tuple(f.shape[-2:]) for f in levels]  # trap: sync shapes are host metadata
        flat = torch.cat([f.flatten(2).transpose(1, 2) for f in levels], 1)
        return flat.view(flat.shape[0], flat.shape[1], 4, EMBED // 4), level_hw


def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    return (alpha * targets + (1 - alpha) * (1 - targets)) * loss  # gt: fused_op low


@torch.no_grad()
def hungarian_assign(cls_logits, boxes, gt_labels, gt_boxes):
    matches = []
    for b in range(cls_logits.shape[0]):  # gt: small_op_loop low
        prob = cls_logits[b].sigmoid()
        pos_cost = 0.25 * (1 - prob) ** 2 * -(prob + 1e-8).log()
        neg_cost = 0.75 * prob ** 2 * -(1 - prob + 1e-8).log()
        cls_cost = (pos_cost - neg_cost)[:, gt_labels[b]]
        center = torch.linalg.norm(boxes[b][:, None, :2] - gt_boxes[b][None, :, :2], dim=-1)  # trap: cpu_fallback vector norm has an NPU kernel
        size = (boxes[b][:, None, 3:8] - gt_boxes[b][None, :, 3:8]).abs().sum(-1)
        cost = 2.0 * cls_cost + 0.25 * (center + size)
        rows, cols = linear_sum_assignment(cost.cpu())  # gt: sync medium hung; fused_op medium hung
        matches.append((torch.as_tensor(rows, device=boxes.device), torch.as_tensor(cols, device=boxes.device)))
    return matches


def detection_loss(outputs, gt_labels, gt_boxes):
    total = 0.0
    for cls_logits, boxes in outputs:  # trap: small_op_loop one loss per decoder layer
        matches = hungarian_assign(cls_logits, boxes, gt_labels, gt_boxes)
        target = torch.zeros_like(cls_logits)
        reg_pred, reg_gt = [], []
        for b, (rows, cols) in enumerate(matches):  # gt: small_op_loop low
            target[b, rows, gt_labels[b][cols]] = 1.0  # trap: sync indexed write with integer indices
            reg_pred.append(boxes[b, rows])
            reg_gt.append(gt_boxes[b][cols])
        num_pos = max(sum(len(g) for g in gt_labels), 1)  # trap: sync lengths of host lists
        total = total + focal_loss(cls_logits, target).sum() / num_pos
        total = total + 0.25 * F.l1_loss(torch.cat(reg_pred), torch.cat(reg_gt), reduction="sum") / num_pos
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    neck = Neck().to(device)
    bank = InstanceBank(NUM_ANCHOR, EMBED, NUM_TEMP).to(device)
    head = SparseBEVHead(EMBED, levels=2, cams=CAMS).to(device)
    optimizer = torch.optim.AdamW([{"params": neck.parameters(), "lr": args.lr * 0.1},  # gt: optimizer medium
                                   {"params": list(bank.parameters()) + list(head.parameters())}],
                                  lr=args.lr, weight_decay=0.01)
    image_wh = torch.tensor([IMG_W, IMG_H], dtype=torch.float32, device=device)
    for step, batch in enumerate(sequence_batches(args.batch_size, args.steps, seed=3)):  # trap: sync generator batches are built on the host
        tic = time.perf_counter()
        imgs = batch["imgs"].to(device)
        lidar2img = batch["lidar2img"].to(device)
        timestamp, ego_pose = batch["timestamp"].to(device), batch["ego_pose"].to(device)
        time_deltas = batch["time_deltas"].to(device)
        gt_boxes = [b.to(device) for b in batch["gt_boxes"]]
        gt_labels = [lab.to(device) for lab in batch["gt_labels"]]

        value, level_hw = neck(imgs.flatten(0, 2))
        query, anchor, cached_query, cached_anchor = bank.get(timestamp, ego_pose)
        if cached_query is not None:
            query = torch.cat([cached_query, query[:, NUM_TEMP:]], 1)
            anchor = torch.cat([cached_anchor, anchor[:, NUM_TEMP:]], 1)
        query, anchor, outputs = head(query, anchor, value, level_hw, time_deltas, lidar2img, image_wh)
        loss = detection_loss(outputs, gt_labels, gt_boxes)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(list(head.parameters()) + list(neck.parameters()), 35.0)  # trap: sync the total norm stays on the device
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        bank.update(query.detach(), anchor, outputs[-1][0].detach(), timestamp, ego_pose)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # gt: sync low
        print(f"step {step} loss {loss.item():.5f} time {time.perf_counter() - tic:.3f}s")  # gt: sync medium


if __name__ == "__main__":
    main()
