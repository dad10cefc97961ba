"""Two-stage-free Deformable-DETR-style 2D detector on synthetic images with boxes."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ops import sample_multilevel_features

NUM_CLASSES, NUM_QUERIES, HEADS, POINTS = 4, 12, 4, 4


def box_cxcywh_to_xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def generalized_box_iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # trap: sync prod of a device tensor does not read it on the host
    union = area_a[:, None] + area_b[None] - inter
    iou = inter / union
    lt_c = torch.min(a[:, None, :2], b[None, :, :2])
    rb_c = torch.max(a[:, None, 2:], b[None, :, 2:])
    area_c = (rb_c - lt_c).clamp(min=0).prod(-1)  # trap: sync prod of a device tensor does not read it on the host
    return iou - (area_c - union) / area_c


def greedy_assignment(cost):
    """Host-side assignment of a (queries, targets) cost matrix (greedy, lowest cost first)."""
    cost = cost.copy()
    rows, cols = [], []
    for _ in range(min(cost.shape)):
        r, c = np.unravel_index(np.argmin(cost), cost.shape)
        rows.append(r)
        cols.append(c)
        cost[r, :] = np.inf
        cost[:, c] = np.inf
    order = np.argsort(rows)
    return np.asarray(rows)[order], np.asarray(cols)[order]


class MSDeformAttn(nn.Module):
    def __init__(self, dim, levels):
        super().__init__()
        self.levels = levels
        self.offsets = nn.Linear(dim, HEADS * levels * POINTS * 2)
        self.weights = nn.Linear(dim, HEADS * levels * POINTS)
        self.value_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query, ref, value, shapes):
        n, lq, c = query.shape
        value = self.value_proj(value).view(n, -1, HEADS, c // HEADS)
        off = self.offsets(query).view(n, lq, HEADS, self.levels, POINTS, 2)
        attn = self.weights(query).view(n, lq, HEADS, self.levels * POINTS).softmax(-1)
        attn = attn.view(n, lq, HEADS, self.levels, POINTS)
        norm = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        loc = ref[:, :, None, None, None, :] + off / norm[None, None, None, :, None, :]
        return self.out_proj(sample_multilevel_features(value, shapes, loc, attn))  # gt: fused_op high msda


class DeformableDETRLite(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(24, 32, 3, 2, 1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(32, 48, 3, 2, 1), nn.ReLU())])
        self.input_proj = nn.ModuleList([nn.Conv2d(c, dim, 1) for c in (24, 32, 48)])
        self.query = nn.Embedding(NUM_QUERIES, dim)
        self.ref = nn.Linear(dim, 2)
        self.attn = MSDeformAttn(dim, 3)
        self.ffn = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))
        self.cls = nn.Linear(dim, NUM_CLASSES + 1)
        self.box = nn.Linear(dim, 4)

    def forward(self, img):
        feats, x = [], img
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        srcs, shapes = [], []
        for lvl, feat in enumerate(feats):  # trap: small_op_loop 3 levels, one big conv each
            src = self.input_proj[lvl](feat)
            shapes.append(tuple(src.shape[-2:]))
            srcs.append(src.flatten(2).transpose(1, 2))
        value = torch.cat(srcs, 1)
        q = self.query.weight[None].expand(img.shape[0], -1, -1)
        ref = self.ref(q).sigmoid()
        hs = q + self.attn(q, ref, value, shapes)
        hs = hs + self.ffn(hs)
        return self.cls(hs), self.box(hs).sigmoid()


def set_criterion(logits, boxes, targets):
    bs, nq = logits.shape[:2]
    with torch.no_grad():
        prob = logits.flatten(0, 1).softmax(-1)
        out_box = boxes.flatten(0, 1)
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_box = torch.cat([t["boxes"] for t in targets])
        cost = (torch.cdist(out_box, tgt_box, p=1) - prob[:, tgt_ids]
                - generalized_box_iou(box_cxcywh_to_xyxy(out_box), box_cxcywh_to_xyxy(tgt_box)))
        cost = cost.view(bs, nq, -1).cpu()  # gt: sync medium match; fused_op medium match
        sizes = [len(t["boxes"]) for t in targets]
        indices = [greedy_assignment(c[i].numpy()) for i, c in enumerate(cost.split(sizes, -1))]
    batch_idx = torch.cat([torch.full((len(src),), i, dtype=torch.long) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([torch.as_tensor(src, dtype=torch.long) for src, _ in indices])
    target_classes = torch.full((bs, nq), NUM_CLASSES, dtype=torch.long, device=logits.device)
    target_classes[batch_idx, src_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes)
    matched = boxes[batch_idx, src_idx]
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])
    num_boxes = torch.as_tensor([float(len(tgt))], device=logits.device)
    num_boxes = torch.clamp(num_boxes, min=1).item()  # gt: sync low
    loss_bbox = F.l1_loss(matched, tgt, reduction="sum") / num_boxes
    loss_giou = (1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(tgt)))).sum() / num_boxes
    return loss_ce + 5 * loss_bbox + 2 * loss_giou


def synthetic_batch(rng, bs, device):
    imgs = torch.from_numpy(rng.standard_normal((bs, 3, 64, 64)).astype(np.float32)).to(device)
    targets = []
    for _ in range(bs):
        n = int(rng.integers(1, 5))
        cxcy = rng.uniform(0.2, 0.8, (n, 2))
        wh = rng.uniform(0.05, 0.3, (n, 2))
        targets.append({"labels": torch.from_numpy(rng.integers(0, NUM_CLASSES, n)).to(device),
                        "boxes": torch.from_numpy(np.concatenate([cxcy, wh], 1).astype(np.float32)).to(device)})
    return imgs, targets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = DeformableDETRLite().to(device)
    param_groups = [{"params": [p for n, p in model.named_parameters() if "stages" not in n], "lr": 2e-4},
                    {"params": [p for n, p in model.named_parameters() if "stages" in n], "lr": 2e-5}]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=1e-4)  # gt: optimizer medium
    for it in range(args.iters):
        imgs, targets = synthetic_batch(rng, args.batch_size, device)
        logits, boxes = model(imgs)
        loss = set_criterion(logits, boxes, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
        print("iter %d loss %.6f" % (it, loss))  # gt: sync medium


if __name__ == "__main__":
    main()
