"""FCOS3D / SMOKE-style monocular 3D detector on synthetic images: per-level dense head, centre-based target
assignment over all FPN levels, focal + attribute losses and a disentangled 3D corner loss."""
import logging
import math
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from backbone import ResNetFPN
from targets import FCOS3DAssigner, level_points

CLASSES = 3
STRIDES = (8, 16, 32)
REGRESS_RANGES = ((-1, 48), (48, 96), (96, 1e8))
IMG_H, IMG_W = 64, 96
PI = math.pi
logger = logging.getLogger("fcos3d")


def box_corners(center, dims, yaw):
    """center (N, 3) camera coords, dims (N, 3) l h w, yaw (N,) about the camera y axis -> (N, 8, 3)."""
    l, h, w = dims[:, 0:1], dims[:, 1:2], dims[:, 2:3]
    x = torch.cat([l, l, -l, -l, l, l, -l, -l], 1) / 2
    y = torch.cat([h, h, h, h, -h, -h, -h, -h], 1) / 2
    z = torch.cat([w, -w, -w, w, w, -w, -w, w], 1) / 2
    cos, sin = torch.cos(yaw)[:, None], torch.sin(yaw)[:, None]
    return torch.stack([cos * x + sin * z + center[:, 0:1], y + center[:, 1:2], -sin * x + cos * z + center[:, 2:3]], -1)


def points_img2cam(uvd, cam2img):
    """Unproject (u, v, depth) with each point's 4x4 camera matrix."""
    depth = uvd[:, 2:3]
    homo = torch.cat([uvd[:, :2] * depth, depth, torch.ones_like(depth)], 1)
    inv = torch.inverse(cam2img)  # trap: cpu_fallback inverse has an NPU kernel
    return (inv @ homo[..., None])[:, :3, 0]


def decode_orientation(vector_ori, locations):
    """SMOKE: local observation angle from (sin, cos), plus the viewing ray -> global yaw in [-pi, pi]."""
    rays = torch.atan(locations[:, 0] / (locations[:, 2] + 1e-7))
    alphas = torch.atan(vector_ori[:, 0] / (vector_ori[:, 1] + 1e-7))
    cos_pos_idx = (vector_ori[:, 1] >= 0).nonzero(as_tuple=False)  # gt: sync medium ori
    cos_neg_idx = (vector_ori[:, 1] < 0).nonzero(as_tuple=False)  # gt: sync medium ori
    alphas[cos_pos_idx] -= PI / 2
    alphas[cos_neg_idx] += PI / 2
    rotys = alphas + rays
    larger_idx = (rotys > PI).nonzero(as_tuple=False)  # gt: sync medium ori
    small_idx = (rotys < -PI).nonzero(as_tuple=False)  # gt: sync medium ori
    if len(larger_idx) != 0:  # trap: sync the size of an existing index tensor is known
        rotys[larger_idx] -= 2 * PI
    if len(small_idx) != 0:  # trap: sync the size of an existing index tensor is known
        rotys[small_idx] += 2 * PI
    return rotys


class MonoScenes(Dataset):
    """Random cars in front of one camera; 2D boxes from the projected 3D corners, computed in numpy."""

    def __init__(self, length, seed):
        self.length, self.seed = length, seed
        self.cam2img = np.array([[60.0, 0, IMG_W / 2, 0], [0, 60.0, IMG_H / 2, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)

    def __len__(self):
        return self.length

    def __getitem__(self, idx):
        rng = np.random.default_rng(self.seed + idx)
        n = int(rng.integers(1, 5))  # trap: sync numpy integer
        centers = np.stack([rng.uniform(-6, 6, n), rng.uniform(0.5, 1.8, n), rng.uniform(8, 40, n)], 1)
        dims = rng.uniform([3.5, 1.4, 1.5], [5.0, 1.8, 2.0], (n, 3))
        yaw = rng.uniform(-PI, PI, n)
        boxes2d, centers2d = [], []
        for c, d, r in zip(centers, dims, yaw):  # trap: small_op_loop per-object projection in numpy in the dataset
            xs = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * d[0] / 2
            zs = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * d[2] / 2
            ys = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * d[1] / 2
            corners = np.stack([np.cos(r) * xs + np.sin(r) * zs + c[0], ys + c[1], -np.sin(r) * xs + np.cos(r) * zs + c[2]], 1)
            uv = (self.cam2img[:3, :3] @ corners.T).T
            uv = uv[:, :2] / np.maximum(uv[:, 2:3], 1e-3)
            boxes2d.append([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
            p = self.cam2img[:3, :3] @ c
            centers2d.append(p[:2] / p[2])
        return {
            "img": torch.from_numpy(rng.standard_normal((3, IMG_H, IMG_W)).astype(np.float32)),
            "cam2img": torch.from_numpy(self.cam2img),
            "boxes2d": torch.tensor(np.array(boxes2d), dtype=torch.float32),
            "centers2d": torch.tensor(np.array(centers2d), dtype=torch.float32),
            "depths": torch.tensor(centers[:, 2], dtype=torch.float32),
            "boxes3d": torch.tensor(np.concatenate([centers, np.log(dims), yaw[:, None]], 1)[:, 3:], dtype=torch.float32),
            "labels": torch.from_numpy(rng.integers(0, CLASSES, n)),
        }


def collate(samples):
    out = {k: [s[k] for s in samples] for k in samples[0]}
    out["img"] = torch.stack(out["img"])
    out["cam2img"] = torch.stack(out["cam2img"])
    return out


class FCOSMono3DHead(nn.Module):
    """One tower shared by all levels; per-level learnable scales on the regression outputs."""

    def __init__(self, channels=32):
        super().__init__()
        self.tower = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.GroupNorm(8, channels), nn.ReLU())
        self.cls = nn.Conv2d(channels, CLASSES, 3, 1, 1)
        self.reg = nn.Conv2d(channels, 2 + 1 + 3 + 2, 3, 1, 1)       # offset, depth, log dims, (sin, cos)
        self.dir = nn.Conv2d(channels, 2, 1)
        self.ctr = nn.Conv2d(channels, 1, 1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES), 3))
        nn.init.constant_(self.cls.bias, -4.6)

    def forward(self, feats):
        outs = []
        for lvl, feat in enumerate(feats):  # trap: small_op_loop the shared head once per level
            x = self.tower(feat)
            reg = self.reg(x)
            scale = self.scales[lvl]
            reg = torch.cat([reg[:, :2] * scale[0], (reg[:, 2:3] * scale[1]).exp() * 10, reg[:, 3:6] * scale[2], reg[:, 6:]], 1)
            outs.append(torch.cat([self.cls(x), reg, self.dir(x), self.ctr(x)], 1).flatten(2))
        return torch.cat(outs, 2).transpose(1, 2)                     # (B, P, C + 8 + 2 + 1), image-major


def sigmoid_focal(pred, target, alpha=0.25, gamma=2.0):
    pred_sigmoid = pred.sigmoid()
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight  # gt: fused_op low


def fcos3d_loss(pred, labels, targets, points, cam2img):
    num_imgs, num_points = pred.shape[:2]
    flat = pred.reshape(-1, pred.shape[-1])
    cls_target = F.one_hot(labels, CLASSES + 1)[:, :CLASSES].float()  # trap: sync one_hot with num_classes reads no values
    pos_inds = ((labels >= 0) & (labels < CLASSES)).nonzero().reshape(-1)  # gt: sync medium
    num_pos = pos_inds.numel()
    loss_cls = sigmoid_focal(flat[:, :CLASSES], cls_target).sum() / max(num_pos, 1.0)
    if num_pos == 0:  # trap: sync num_pos is a Python int already
        return loss_cls, flat.new_zeros(())
    pos = flat[pos_inds]
    tgt = targets[pos_inds]
    reg = pos[:, CLASSES:CLASSES + 8]
    loss_offset = F.smooth_l1_loss(reg[:, :2], tgt[:, :2], beta=1.0 / 9)
    loss_depth = F.l1_loss(reg[:, 2].log(), tgt[:, 2].log())
    loss_dims = F.l1_loss(reg[:, 3:6], tgt[:, 3:6])
    # direction bin of the GT yaw (0: facing away, 1: towards the camera)
    dir_target = torch.floor(torch.remainder(tgt[:, 6] + PI / 2, 2 * PI) / PI).long().clamp(0, 1)
    loss_dir = F.cross_entropy(pos[:, CLASSES + 8:CLASSES + 10], dir_target)
    pos_points = points.repeat(num_imgs, 1)[pos_inds]
    pos_cam2img = cam2img.repeat_interleave(num_points, dim=0)[pos_inds]  # trap: sync repeat_interleave with an int count
    ctr_target = torch.exp(-tgt[:, :2].norm(dim=-1) / 16)
    loss_ctr = F.binary_cross_entropy_with_logits(pos[:, -1], ctr_target)
    # disentangled corner loss: predicted centre / depth / orientation, GT dims
    pred_center = points_img2cam(torch.cat([pos_points + reg[:, :2], reg[:, 2:3]], 1), pos_cam2img)
    gt_center = points_img2cam(torch.cat([pos_points + tgt[:, :2], tgt[:, 2:3]], 1), pos_cam2img)
    yaw = decode_orientation(F.normalize(reg[:, 6:8], dim=-1), pred_center)
    pred_corners = box_corners(pred_center, tgt[:, 3:6].exp(), yaw)
    gt_corners = box_corners(gt_center, tgt[:, 3:6].exp(), tgt[:, 6])
    loss_corner = F.smooth_l1_loss(pred_corners, gt_corners)
    depth_rel = ((reg[:, 2] - tgt[:, 2]).abs() / tgt[:, 2]).mean().detach()
    return loss_cls + loss_offset + loss_depth + loss_dims + 0.2 * loss_dir + loss_ctr + 0.2 * loss_corner, depth_rel


def main():
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = nn.ModuleDict({"backbone": ResNetFPN(), "head": FCOSMono3DHead()}).to(device)
    assigner = FCOS3DAssigner(CLASSES, STRIDES, REGRESS_RANGES)
    # mmdet paramwise_cfg: biases at twice the learning rate and without weight decay
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # trap: small_op_loop parameter groups built once
        (no_decay if name.endswith("bias") else decay).append(p)
    base_lr = 0.002
    optimizer = torch.optim.SGD([{"params": decay}, {"params": no_decay, "lr": 2 * base_lr, "weight_decay": 0.0}],  # gt: optimizer medium
                                lr=base_lr, momentum=0.9, weight_decay=1e-4)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    loader = DataLoader(MonoScenes(16, seed=5), batch_size=2, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(1))
    depth_errors = []
    step = 0
    for epoch in range(1):
        for batch in loader:  # trap: sync DataLoader iteration runs on the host
            warmup = min(1.0, (step + 1) / 4)
            for group in optimizer.param_groups:  # trap: small_op_loop linear warmup sets host floats
                group["lr"] = group["initial_lr"] * warmup
            imgs, cam2img = batch["img"].to(device), batch["cam2img"].to(device)
            feats = model["backbone"](imgs)
            pred = model["head"](feats)
            points = level_points([f.shape[-2:] for f in feats], STRIDES, imgs.dtype, device)
            labels, targets = assigner.get_targets(points, [b.to(device) for b in batch["boxes2d"]],
                                                   [lab.to(device) for lab in batch["labels"]],
                                                   [c.to(device) for c in batch["centers2d"]],
                                                   [d.to(device) for d in batch["depths"]],
                                                   [b.to(device) for b in batch["boxes3d"]])
            loss, depth_rel = fcos3d_loss(pred, labels, targets, torch.cat(points), cam2img)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=35, norm_type=2)  # trap: sync the total norm stays on the device
            optimizer.step()  # trap: sync SGD keeps its momentum on the device
            depth_errors.append(float(depth_rel))  # gt: sync medium
            logger.info("epoch %d iter %d loss %.5f lr %.5f", epoch, step, loss, optimizer.param_groups[0]["lr"])  # gt: sync medium
            step += 1
    logger.info("mean abs-rel depth error %.4f", np.mean(depth_errors))


if __name__ == "__main__":
    main()
