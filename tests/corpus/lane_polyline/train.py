"""Query-based lane detection (polyline regression with set matching) on synthetic front-camera images."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from matching import linear_sum_assignment

NUM_QUERIES = 7
NUM_PTS = 12
MAX_LANES = 4


def resample_polyline(points, num):
    """Resample a polyline to `num` points evenly spaced along its arc length (numpy, data side)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    dist = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, dist[-1], num)
    return np.stack([np.interp(targets, dist, points[:, k]) for k in range(2)], 1).astype(np.float32)


class LaneDataset(torch.utils.data.Dataset):
    def __init__(self, n, seed=3):
        self.n, self.seed = n, seed

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(self.seed + i)
        img = rng.standard_normal((3, 48, 96)).astype(np.float32)
        lanes = np.zeros((MAX_LANES, NUM_PTS, 2), np.float32)
        num = int(rng.integers(2, MAX_LANES + 1))
        for j in range(num):
            ctrl = np.stack([np.linspace(0, 1, 5), rng.uniform(0, 1) + 0.1 * rng.standard_normal(5)], 1)
            lanes[j] = resample_polyline(ctrl, NUM_PTS)
        lanes_t = torch.from_numpy(lanes)
        lengths = torch.tensor([NUM_PTS - int(rng.integers(0, 4)) for _ in range(MAX_LANES)])
        visible = torch.zeros(MAX_LANES, NUM_PTS)
        for j, n_vis in enumerate(lengths.tolist()):  # trap: small_op_loop dataset-side mask on CPU tensors
            visible[j, :n_vis] = 1.0
        return torch.from_numpy(img), lanes_t, visible, num


class LaneDETR(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.GroupNorm(8, 32), nn.ReLU(),
            nn.Conv2d(32, dim, 3, 2, 1), nn.GroupNorm(8, dim), nn.ReLU(),
            nn.Conv2d(dim, dim, 3, 2, 1), nn.GroupNorm(8, dim), nn.ReLU())
        self.query_embed = nn.Embedding(NUM_QUERIES, dim)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(dim, 4, 128, batch_first=True), 2)
        self.cls_head = nn.Linear(dim, 1)
        self.reg_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, NUM_PTS * 2))

    def forward(self, img):
        mem = self.backbone(img).flatten(2).transpose(1, 2)
        q = self.query_embed.weight.unsqueeze(0).expand(img.shape[0], -1, -1)
        hs = self.decoder(q, mem)
        return self.cls_head(hs).squeeze(-1), self.reg_head(hs).sigmoid().view(-1, NUM_QUERIES, NUM_PTS, 2)


@torch.no_grad()
def hungarian_assign(cls_logits, pred_lanes, gt_lanes, visible, num_gt):
    """Match predictions to ground-truth lanes per image; returns (pred_idx, gt_idx) per image."""
    assignments = []
    for b, n in enumerate(num_gt.tolist()):  # gt: sync medium numgt; small_op_loop low
        gt, vis = gt_lanes[b, :n], visible[b, :n]
        l1 = (pred_lanes[b][:, None] - gt[None]).abs().sum(-1)                 # (Q, n, P)
        l1 = (l1 * vis[None]).sum(-1) / vis.sum(-1).clamp(min=1)[None]
        cost = l1 - cls_logits[b].sigmoid()[:, None]
        rows, cols = linear_sum_assignment(cost.cpu().numpy())  # gt: sync medium hung; fused_op medium hung
        assignments.append((torch.as_tensor(rows), torch.as_tensor(cols)))
    return assignments


def lane_loss(cls_logits, pred_lanes, gt_lanes, visible, num_gt):
    assignments = hungarian_assign(cls_logits, pred_lanes, gt_lanes, visible, num_gt)
    cls_target = torch.zeros_like(cls_logits)
    reg_losses = []
    for b, (pi, gi) in enumerate(assignments):  # gt: small_op_loop medium
        pi, gi = pi.to(cls_logits.device), gi.to(cls_logits.device)
        cls_target[b, pi] = 1.0
        diff = (pred_lanes[b, pi] - gt_lanes[b, gi]).abs().sum(-1)
        vis = visible[b, gi]
        reg_losses.append((diff * vis).sum() / vis.sum().clamp(min=1))
    loss_cls = F.binary_cross_entropy_with_logits(cls_logits, cls_target)
    return loss_cls + torch.stack(reg_losses).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--bs", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(7)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model = LaneDETR().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # gt: optimizer medium
    loader = torch.utils.data.DataLoader(LaneDataset(16), batch_size=args.bs)
    history = []
    for epoch in range(args.epochs):
        for it, (img, lanes, visible, num_gt) in enumerate(loader):  # trap: sync DataLoader internals run on the host
            img, lanes, visible, num_gt = (t.to(device) for t in (img, lanes, visible, num_gt))
            cls_logits, pred = model(img)
            loss = lane_loss(cls_logits, pred, lanes, visible, num_gt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
            history.append(float(loss))  # gt: sync medium
            print(f"[{epoch}:{it}] loss={history[-1]:.6f}")
    print("final mean loss", np.mean(history))


if __name__ == "__main__":
    main()
