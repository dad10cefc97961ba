"""DETR3D-flavoured multi-view 3D detection head: 3D reference points projected into the cameras, features
sampled and averaged over views, set-based losses logged per term."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import count_parameters, pad_queries, parse_losses

CAMS, QUERIES, DIM, CLASSES = 4, 20, 32, 4


class ImageFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, DIM, 3, 2, 1), nn.ReLU())

    def forward(self, imgs):
        b, n = imgs.shape[:2]
        f = self.net(imgs.flatten(0, 1))
        return f.view(b, n, *f.shape[1:])


class DETR3DHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Embedding(QUERIES, DIM)
        self.ref = nn.Linear(DIM, 3)
        self.out = nn.Sequential(nn.Linear(DIM, DIM), nn.ReLU())
        self.cls = nn.Linear(DIM, CLASSES)
        self.box = nn.Linear(DIM, 7)

    def forward(self, feats, lidar2img):
        b, n, c, h, w = feats.shape
        q = self.query.weight[None].expand(b, -1, -1)
        ref = self.ref(q).sigmoid() * 60 - 30                                      # (b, Q, 3)
        homo = torch.cat([ref, torch.ones_like(ref[..., :1])], -1)
        cam = torch.einsum("bnij,bqj->bnqi", lidar2img, homo)
        depth = cam[..., 2:3]
        uv = cam[..., :2] / depth.clamp(min=1e-5)
        uv = uv / uv.new_tensor([w * 4, h * 4]) * 2 - 1
        valid = (depth[..., 0] > 0.1) & (uv.abs() <= 1).all(-1)                   # (b, n, Q)
        sampled = F.grid_sample(feats.flatten(0, 1), uv.flatten(0, 1)[:, :, None], align_corners=False)
        sampled = sampled.view(b, n, c, QUERIES).permute(0, 3, 1, 2)                # (b, Q, n, C)
        weight = valid.permute(0, 2, 1).float()[..., None]
        feat = (sampled * weight).sum(2) / weight.sum(2).clamp(min=1)
        q = q + self.out(feat)
        return self.cls(q), self.box(q), valid


def detr3d_losses(cls, box, valid, gt_boxes, gt_labels, num_gt):
    # visible queries only; every query is matched to its nearest ground-truth centre
    vis = valid.any(1)                                                              # (b, Q)
    dist = torch.cdist(box[..., :3], gt_boxes[..., :3])
    dist = torch.where(torch.arange(gt_boxes.shape[1], device=box.device)[None, None] < num_gt[:, None, None],
                       dist, torch.full_like(dist, 1e4))  # trap: sync three-argument torch.where is elementwise
    nearest = dist.argmin(-1)
    tgt_box = torch.gather(gt_boxes, 1, nearest[..., None].expand(-1, -1, 7))
    tgt_cls = torch.gather(gt_labels, 1, nearest)
    b_idx, q_idx = torch.where(vis)  # gt: sync medium
    loss_cls = F.cross_entropy(cls[b_idx, q_idx], tgt_cls[b_idx, q_idx])
    l1 = (box - tgt_box).abs().sum(-1)
    loss_bbox = torch.masked_select(l1, vis).mean()  # gt: sync medium
    return {"loss_cls": loss_cls, "loss_bbox": 0.25 * loss_bbox, "num_visible": vis.float().sum()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--eval-interval", type=int, default=100)
    args = ap.parse_args()
    torch.manual_seed(19)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, head = ImageFeatures().to(device), DETR3DHead().to(device)
    print(f"trainable parameters: {count_parameters(backbone) + count_parameters(head)}")
    optimizer = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=2e-4)  # gt: optimizer medium
    g = torch.Generator().manual_seed(19)
    lidar2img = torch.eye(4).repeat(args.batch_size, CAMS, 1, 1)
    lidar2img[:, :, 0, 2], lidar2img[:, :, 1, 2] = 32.0, 16.0
    lidar2img = lidar2img.to(device)
    for it in range(args.iters):
        imgs = torch.randn(args.batch_size, CAMS, 3, 32, 64, generator=g).to(device)
        num_gt = torch.randint(2, 6, (args.batch_size,), generator=g)
        per_sample = [torch.randn(int(n), 7, generator=g) * 10 for n in num_gt]  # trap: any num_gt is a CPU tensor from the host generator
        gt_labels = torch.randint(0, CLASSES, (args.batch_size, 5), generator=g).to(device)
        gt_boxes, _ = pad_queries([t.to(device) for t in per_sample], num_gt.to(device))
        gt_boxes = F.pad(gt_boxes, (0, 0, 0, 5 - gt_boxes.shape[1]))
        cls, box, valid = head(backbone(imgs), lidar2img)
        losses = detr3d_losses(cls, box, valid, gt_boxes, gt_labels, num_gt.to(device))
        loss, log_vars = parse_losses(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        print(f"iter {it} loss {log_vars['loss']:.6f} visible {log_vars['num_visible']:.0f}")
        if (it + 1) % args.eval_interval == 0:
            print("eval", {k: round(v, 4) for k, v in log_vars.items()})


if __name__ == "__main__":
    main()
