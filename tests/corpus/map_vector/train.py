"""MapTR-style vectorized HD-map learning: fixed-size point sets per map element, permutation-equivalent
matching of closed polygons, on synthetic BEV features."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_VEC, NUM_PTS, CLASSES, DIM = 10, 16, 3, 64


def pad_collate(samples):
    """Pad a variable number of map elements per sample (host side)."""
    max_n = max(s["vectors"].shape[0] for s in samples)
    bev = torch.stack([s["bev"] for s in samples])
    vectors = torch.zeros(len(samples), max_n, NUM_PTS, 2)
    labels = torch.full((len(samples), max_n), -1, dtype=torch.long)
    counts = []
    for i, s in enumerate(samples):  # trap: small_op_loop collate pads CPU tensors
        n = s["vectors"].shape[0]
        vectors[i, :n] = s["vectors"]
        labels[i, :n] = s["labels"]
        counts.append(n)
    return bev, vectors, labels, torch.tensor(counts)


class MapDataset(torch.utils.data.Dataset):
    def __init__(self, n, seed=13):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        rng = np.random.default_rng(self.seed + idx)
        n = int(rng.integers(3, 7))
        t = np.linspace(0, 1, NUM_PTS)
        start = rng.uniform(-1, 1, (n, 1, 2))
        direction = rng.normal(0, 1, (n, 1, 2))
        vectors = start + t[None, :, None] * direction + 0.02 * rng.standard_normal((n, NUM_PTS, 2))
        return {"bev": torch.from_numpy(rng.standard_normal((DIM, 16, 16)).astype(np.float32)),
                "vectors": torch.from_numpy(vectors.astype(np.float32)),
                "labels": torch.from_numpy(rng.integers(0, CLASSES, n))}


class MapDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.bev_proj = nn.Conv2d(DIM, DIM, 1)
        self.instance_q = nn.Embedding(NUM_VEC, DIM)
        self.point_q = nn.Embedding(NUM_PTS, DIM)
        self.layer = nn.TransformerDecoderLayer(DIM, 4, 128, batch_first=True)
        self.cls = nn.Linear(DIM, CLASSES)
        self.pts = nn.Linear(DIM, 2)

    def forward(self, bev):
        b = bev.shape[0]
        mem = self.bev_proj(bev).flatten(2).transpose(1, 2)
        q = (self.instance_q.weight[:, None] + self.point_q.weight[None]).flatten(0, 1)
        q = self.layer(q[None].expand(b, -1, -1), mem).view(b, NUM_VEC, NUM_PTS, DIM)
        return self.cls(q.mean(2)), self.pts(q).tanh() * 2


def shifted_targets(vectors):
    """All cyclic shifts of every target polyline, both directions: (n, 2 * NUM_PTS, NUM_PTS, 2)."""
    shifts = [torch.roll(vectors, s, dims=1) for s in range(NUM_PTS)]  # gt: small_op_loop medium
    forward = torch.stack(shifts, 1)
    return torch.cat([forward, forward.flip(2)], 1)


def assign(cls_logits, pred_pts, vectors, labels, counts):
    gt_idx_per_query = []
    for b in range(cls_logits.shape[0]):  # gt: small_op_loop medium assign
        n = counts[b]
        gt = shifted_targets(vectors[b, :n])  # gt: sync medium count-index
        pts_cost = (pred_pts[b][:, None, None] - gt[None]).abs().sum((-1, -2)).min(-1).values / NUM_PTS
        cls_cost = -cls_logits[b].softmax(-1)[:, labels[b, :n]]  # gt: sync medium count-index
        cost = (pts_cost + cls_cost).detach().cpu().numpy()  # gt: sync medium match; fused_op medium match
        gt_idx_per_query.append(torch.from_numpy(cost.argmin(1)))
    return gt_idx_per_query


def map_loss(cls_logits, pred_pts, vectors, labels, counts):
    idx = assign(cls_logits, pred_pts, vectors, labels, counts)
    idx = torch.stack(idx).to(cls_logits.device)
    batch_ix = torch.arange(len(idx), device=idx.device).repeat_interleave(NUM_VEC)  # trap: sync int repeats need no output size
    tgt_labels = labels[batch_ix, idx.flatten()].view_as(idx)
    loss_cls = F.cross_entropy(cls_logits.flatten(0, 1), tgt_labels.flatten())
    tgt_pts = vectors[batch_ix, idx.flatten()]
    loss_pts = F.l1_loss(pred_pts.flatten(0, 1), tgt_pts)
    dirs_pred = pred_pts[:, :, 1:] - pred_pts[:, :, :-1]
    dirs_gt = tgt_pts.view_as(pred_pts)[:, :, 1:] - tgt_pts.view_as(pred_pts)[:, :, :-1]
    loss_dir = (1 - F.cosine_similarity(dirs_pred, dirs_gt, dim=-1)).mean()
    # sample index of every ground-truth element: weight the direction term by map density
    gt_batch = torch.arange(len(counts), device=counts.device).repeat_interleave(counts)  # gt: sync medium
    density = torch.bincount(gt_batch, minlength=len(counts)).float()  # gt: sync medium
    loss_dir = loss_dir * (density.mean() / density.max())
    return loss_cls + 5 * loss_pts + 0.1 * loss_dir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(13)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = MapDecoder().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.01)  # gt: optimizer medium
    loader = torch.utils.data.DataLoader(MapDataset(8), batch_size=args.batch_size, collate_fn=pad_collate)
    for epoch in range(args.epochs):
        for it, (bev, vectors, labels, counts) in enumerate(loader):  # trap: sync DataLoader internals run on the host
            bev, vectors, labels, counts = bev.to(device), vectors.to(device), labels.to(device), counts.to(device)
            cls_logits, pred_pts = model(bev)
            loss = map_loss(cls_logits, pred_pts, vectors, labels, counts)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            print(f"epoch {epoch} iter {it} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
