"""HiVT/QCNet-flavoured agent interaction encoder: local agent graphs built by radius, message passing
with max aggregation, a transformer over agents, and a multi-modal trajectory decoder."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from layers import RMSNorm, SelfAttention, scatter_max

DIM, HEADS, MODES, FUT = 32, 4, 3, 10
RADIUS = 15.0


def radius_graph(pos, radius):
    """Directed edges (src, dst) between agents closer than `radius` metres."""
    diff = pos[:, None, :] - pos[None, :, :]
    dist = torch.hypot(diff[..., 0], diff[..., 1])  # gt: cpu_fallback high
    adj = (dist < radius) & ~torch.eye(len(pos), dtype=torch.bool, device=pos.device)
    return adj.nonzero().t(), dist  # gt: sync medium


class AgentEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(6, DIM), nn.ReLU(), nn.Linear(DIM, DIM))
        self.edge = nn.Sequential(nn.Linear(DIM + 3, DIM), nn.ReLU())
        self.norm1 = RMSNorm(DIM)
        self.attn = SelfAttention(DIM, HEADS)
        self.norm2 = RMSNorm(DIM)
        self.ffn = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))

    def forward(self, state, pos):
        x = self.embed(state)
        (src, dst), dist = radius_graph(pos, RADIUS)
        rel = torch.cat([pos[src] - pos[dst], dist[src, dst, None]], -1)
        msg = self.edge(torch.cat([x[src], rel], -1))
        agg, _ = scatter_max(msg, dst, dim=0, dim_size=x.shape[0])  # gt: fused_op high smax
        x = x + agg
        h = x[None]
        h = h + self.attn(self.norm1(h), pos[None, :, 0])
        h = h + self.ffn(self.norm2(h))
        return h[0]


class MultiModalDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.modes = nn.Parameter(torch.randn(MODES, DIM) * 0.1)
        self.traj = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, FUT * 2))
        self.prob = nn.Linear(DIM, 1)

    def forward(self, h):
        q = h[:, None] + self.modes[None]
        return self.traj(q).view(h.shape[0], MODES, FUT, 2).cumsum(2), self.prob(q).squeeze(-1)


def winner_takes_all(traj, logits, gt):
    ade = (traj - gt[:, None]).norm(dim=-1).mean(-1)
    best = ade.argmin(-1)
    reg = F.smooth_l1_loss(traj[torch.arange(len(gt), device=gt.device), best], gt)
    return reg + F.cross_entropy(logits, best)


def make_scene(rng, n):
    pos = rng.uniform(-30, 30, (n, 2)).astype(np.float32)
    vel = rng.normal(0, 3, (n, 2)).astype(np.float32)
    heading = np.arctan2(vel[:, 1], vel[:, 0])[:, None].astype(np.float32)
    state = np.concatenate([pos / 30, vel / 3, np.cos(heading), np.sin(heading)], 1)
    t = np.arange(1, FUT + 1, dtype=np.float32)[None, :, None] * 0.1
    fut = vel[:, None] * t + 0.05 * rng.standard_normal((n, FUT, 2)).astype(np.float32)
    return state, pos, fut


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--agents", type=int, default=24)
    args = ap.parse_args()
    torch.manual_seed(16)
    rng = np.random.default_rng(16)
    device = torch.device("npu" if hasattr(torch, "npu") and torch.npu.is_available() else "cpu")
    encoder, decoder = AgentEncoder().to(device), MultiModalDecoder().to(device)
    optimizer = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=5e-4)  # gt: optimizer medium
    for step in range(args.steps):
        state, pos, fut = (torch.from_numpy(a).to(device) for a in make_scene(rng, args.agents))
        traj, logits = decoder(encoder(state, pos))
        loss = winner_takes_all(traj, logits, fut)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync Adam step counters are host tensors
        print(f"step {step} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
