"""PETR-style multi-camera 3D detector: image features of six cameras carry a 3D position embedding,
object queries decode boxes with a transformer decoder; focal classification + L1 box regression against
the nearest ground-truth object."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from position import PositionEncoder3D, inverse_sigmoid

CAMS, IMG_H, IMG_W, DIM, QUERIES, CLASSES, MAX_OBJS = 6, 64, 160, 64, 60, 5, 16
PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def camera_rig(yaw):
    """lidar2img for a 70-degree camera looking along `yaw` (host-side numpy calibration)."""
    f = 0.5 * IMG_W / math.tan(math.radians(35))
    intrinsic = np.array([[f, 0, IMG_W / 2, 0], [0, f, IMG_H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    c, s = math.cos(yaw), math.sin(yaw)
    # lidar (x fwd, y left, z up) -> camera (x right, y down, z fwd), rotated by yaw about z
    lidar2cam = np.array([[s, -c, 0, 0], [0, 0, -1, 1.6], [c, s, 0, -0.5], [0, 0, 0, 1]], np.float32)
    return intrinsic @ lidar2cam


class SurroundScenes(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(900 + i)
        imgs = rng.normal(0, 1, (CAMS, 3, IMG_H, IMG_W)).astype(np.float32)
        jitter = rng.normal(0, 0.01, CAMS)
        lidar2img = np.stack([camera_rig(2 * math.pi * k / CAMS + jitter[k]) for k in range(CAMS)])  # trap: small_op_loop host-side calibration per camera
        num = int(rng.integers(4, MAX_OBJS))
        boxes = np.zeros((MAX_OBJS, 7), np.float32)      # x, y, z, w, l, h, yaw
        boxes[:num, :2] = rng.uniform(-40, 40, (num, 2))
        boxes[:num, 2] = rng.uniform(-1, 1, num)
        boxes[:num, 3:6] = rng.uniform(1, 4, (num, 3))
        boxes[:num, 6] = rng.uniform(-math.pi, math.pi, num)
        labels = np.full(MAX_OBJS, -1, np.int64)
        labels[:num] = rng.integers(0, CLASSES, num)
        return torch.from_numpy(imgs), torch.from_numpy(lidar2img), torch.from_numpy(boxes), torch.from_numpy(labels)


class PETRHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 32, 5, 4, 2), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, DIM, 3, 4, 1), nn.BatchNorm2d(DIM), nn.ReLU())
        self.position = PositionEncoder3D(DIM, num_bins=16, pc_range=PC_RANGE)
        self.reference = nn.Embedding(QUERIES, 3)
        self.query_pos = nn.Sequential(nn.Linear(3, DIM), nn.ReLU(), nn.Linear(DIM, DIM))
        layer = nn.TransformerDecoderLayer(DIM, 4, 128, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 2)
        self.cls_branch = nn.Linear(DIM, CLASSES)
        self.reg_branch = nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU(), nn.Linear(DIM, 8))
        nn.init.constant_(self.cls_branch.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, imgs, lidar2img):
        bs = imgs.shape[0]
        feats = self.backbone(imgs.flatten(0, 1))
        feats = feats.view(bs, CAMS, *feats.shape[1:])
        pos, masks = self.position(feats, lidar2img, (IMG_H, IMG_W))
        memory = (feats + pos).permute(0, 1, 3, 4, 2).reshape(bs, -1, DIM)
        ref = self.reference.weight.sigmoid()
        tgt = self.query_pos(inverse_sigmoid(ref))[None].expand(bs, -1, -1)
        hs = self.decoder(tgt, memory, memory_key_padding_mask=masks.flatten(1))
        reg = self.reg_branch(hs)
        pc_min, pc_size = self.position.pc_min, self.position.pc_size
        centers = (reg[..., :3] + inverse_sigmoid(ref)).sigmoid() * pc_size + pc_min
        return self.cls_branch(hs), torch.cat([centers, reg[..., 3:]], -1)


def sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))).sum()


def petr_loss(cls_logits, boxes_pred, gt_boxes, gt_labels):
    """Each query is assigned to its nearest ground-truth center in BEV when closer than 3 m."""
    valid = gt_labels >= 0
    dist = torch.cdist(boxes_pred[..., :2], gt_boxes[..., :2])                  # (B, Q, G)
    dist = dist.masked_fill(~valid[:, None], 1e4)  # trap: sync masked_fill reads no values
    near_dist, nearest = dist.min(-1)
    positive = near_dist < 3.0
    labels = gt_labels.gather(1, nearest).clamp(min=0)
    cls_target = F.one_hot(labels, CLASSES).float() * positive[..., None]  # trap: sync one_hot with num_classes needs no read
    avg_factor = max(positive.sum().item(), 1.0)  # gt: sync medium
    loss_cls = sigmoid_focal_loss(cls_logits, cls_target) / avg_factor
    matched = gt_boxes.gather(1, nearest[..., None].expand(-1, -1, 7))
    target = torch.cat([matched[..., :6], matched[..., 6:].sin(), matched[..., 6:].cos()], -1)
    loss_bbox = (F.l1_loss(boxes_pred, target, reduction="none") * positive[..., None]).sum() / avg_factor
    return loss_cls + 0.25 * loss_bbox


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(17)
    if hasattr(torch, "npu") and torch.npu.is_available():
        device = torch.device("npu")
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = PETRHead().to(device)
    backbone_params = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    other_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.AdamW([{"params": backbone_params, "lr": 2e-5},  # gt: optimizer medium
                                   {"params": other_params}], lr=2e-4, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(SurroundScenes(args.iters * 2), batch_size=2)
    history = []
    for it, (imgs, lidar2img, boxes, labels) in enumerate(loader):  # trap: sync DataLoader iteration runs on the host
        imgs, lidar2img, boxes, labels = imgs.to(device), lidar2img.to(device), boxes.to(device), labels.to(device)
        cls_logits, boxes_pred = model(imgs, lidar2img)
        loss = petr_loss(cls_logits, boxes_pred, boxes, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        history.append(loss.detach())
    print("loss", " ".join(f"{v:.6f}" for v in torch.stack(history).tolist()))  # trap: sync once after training


if __name__ == "__main__":
    main()
