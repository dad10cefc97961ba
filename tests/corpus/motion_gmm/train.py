"""Agent-centric motion forecasting (vectorized history encoder + GMM decoder) on synthetic agents."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn

from losses import gmm_nll, min_ade

HIST, FUT, MODES = 10, 12, 6


def make_scene(rng, num_agents):
    """Constant-turn-rate agents; returns history and future in each agent's frame (numpy)."""
    t = np.arange(-HIST + 1, FUT + 1, dtype=np.float32) * 0.1
    speed = rng.uniform(2, 12, (num_agents, 1)).astype(np.float32)
    yaw_rate = rng.uniform(-0.3, 0.3, (num_agents, 1)).astype(np.float32)
    heading = yaw_rate * t
    xy = np.stack([np.cumsum(speed * np.cos(heading) * 0.1, 1), np.cumsum(speed * np.sin(heading) * 0.1, 1)], -1)
    xy -= xy[:, HIST - 1:HIST]
    xy += rng.normal(0, 0.05, xy.shape).astype(np.float32)
    return xy[:, :HIST], xy[:, HIST:]


class AgentDataset(torch.utils.data.Dataset):
    def __init__(self, n, agents=16, seed=11):
        self.n, self.agents, self.seed = n, agents, seed

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        rng = np.random.default_rng(self.seed + idx)
        hist, fut = make_scene(rng, self.agents)
        valid = (rng.uniform(size=(self.agents, FUT)) > 0.1).astype(np.float32)
        return torch.from_numpy(hist), torch.from_numpy(fut), torch.from_numpy(valid)


class HistoryEncoder(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.cell = nn.GRUCell(dim, dim)

    def forward(self, hist):
        vel = torch.diff(hist, dim=1, prepend=hist[:, :1])
        x = self.embed(torch.cat([hist, vel], -1))
        h = x.new_zeros(x.shape[0], x.shape[2])
        t = 0
        while t < x.shape[1]:  # trap: small_op_loop recurrence, each step needs the previous state
            h = self.cell(x[:, t], h)
            t += 1
        return h


class GMMDecoder(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mode_queries = nn.Parameter(torch.randn(MODES, dim) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 128), nn.ReLU(), nn.Linear(128, FUT * 5))
        self.score = nn.Linear(2 * dim, 1)

    def forward(self, h):
        a = h.shape[0]
        x = torch.cat([h[:, None].expand(-1, MODES, -1), self.mode_queries[None].expand(a, -1, -1)], -1)
        out = self.mlp(x).view(a, MODES, FUT, 5)
        mu = out[..., :2].cumsum(2)
        l11 = nn.functional.softplus(out[..., 2]) + 1e-2
        l22 = nn.functional.softplus(out[..., 3]) + 1e-2
        tril = torch.zeros(*out.shape[:3], 2, 2, device=out.device, dtype=out.dtype)
        tril[..., 0, 0] = l11
        tril[..., 1, 0] = out[..., 4]
        tril[..., 1, 1] = l22
        return mu, tril, self.score(x).squeeze(-1)


class Forecaster(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.encoder = HistoryEncoder(dim)
        self.decoder = GMMDecoder(dim)

    def forward(self, hist):
        return self.decoder(self.encoder(hist))


def per_agent_report(ade, threshold=2.0):
    """Count agents whose best mode is within `threshold` metres (for the progress line)."""
    hits = 0
    for i in range(len(ade)):  # gt: small_op_loop medium agent-loop
        if ade[i].item() < threshold:  # gt: sync high; small_op_loop medium agent-loop
            hits += 1
    return hits / max(len(ade), 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-4)
    args = ap.parse_args()
    torch.manual_seed(5)
    use_npu = hasattr(torch, "npu") and torch.npu.is_available()
    device = torch.device("npu:0") if use_npu else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Forecaster().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, foreach=True)  # trap: optimizer already multi-tensor (foreach)
    loader = torch.utils.data.DataLoader(AgentDataset(8), batch_size=args.batch)
    # ego calibration from the dataset description: lives on the host for the whole run
    ego_calib = torch.tensor(np.eye(3, dtype=np.float32) * 1.5)
    calib_scale = torch.linalg.det(ego_calib).item() ** (1.0 / 3.0)  # trap: cpu_fallback host tensor, once
    for epoch in range(args.epochs):
        for step, (hist, fut, valid) in enumerate(loader):  # trap: sync DataLoader internals run on the host
            hist = hist.flatten(0, 1).to(device) / calib_scale
            fut = fut.flatten(0, 1).to(device) / calib_scale
            valid = valid.flatten(0, 1).to(device)
            mu, tril, logits = model(hist)
            loss = gmm_nll(mu, tril, logits, fut, valid) / FUT
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            with torch.no_grad():
                hit_rate = per_agent_report(min_ade(mu, fut, valid))
            print(f"epoch {epoch} step {step} loss {loss.item():.6f} hit@2m {hit_rate:.3f}")  # gt: sync medium


if __name__ == "__main__":
    main()
