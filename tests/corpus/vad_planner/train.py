"""VAD / UniAD-style planning head: an ego query with ego status attends to BEV features, agent
queries and map queries; a GRU decodes waypoints step by step; trained with imitation L1 plus
vectorized safety constraints."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import planning_losses as PL

CFG = {
    "bev": {"channels": 32, "size": 25},
    "agents": 12, "map_lanes": 6, "lane_pts": 10, "horizon": 6, "dt": 0.5, "dim": 64,
    "loss_weights": {"imitation": 1.0, "collision": 0.5, "boundary": 0.5, "direction": 0.2, "comfort": 0.01},
    "optimizer": {"type": "AdamW", "lr": 2e-4, "weight_decay": 0.01},  # gt: optimizer medium opt
    "batch_size": 4, "iters": 6,
}


def make_sample(rng, cfg):
    """One synthetic scene: BEV features, agent futures, lane boundary polylines, ego status, expert plan."""
    T, dt = cfg["horizon"], cfg["dt"]
    speed, yaw_rate = rng.uniform(2, 12), rng.normal(0, 0.05)
    ts = np.arange(1, T + 1) * dt
    yaw = yaw_rate * ts
    plan = np.stack([speed * ts * np.cos(yaw), speed * ts * np.sin(yaw)], -1).astype(np.float32)
    agents = rng.uniform(-30, 30, (cfg["agents"], 1, 2)) + rng.normal(0, 3, (cfg["agents"], 1, 2)) * ts[None, :, None]
    valid = (rng.uniform(size=cfg["agents"]) < 0.7).astype(np.float32)
    offsets = np.array([-5.25, -1.75, 1.75, 5.25, 8.75, -8.75])[: cfg["map_lanes"]]
    xs = np.linspace(-10, 40, cfg["lane_pts"])
    lanes = np.stack([np.stack([xs, np.full_like(xs, o) + 0.002 * xs ** 2], -1) for o in offsets])  # trap: small_op_loop six lanes built in numpy
    ego_status = np.array([speed, 0.0, rng.normal(0, 0.3), yaw_rate], np.float32)   # vx, vy, ax, yaw rate
    bev = rng.normal(0, 1, (cfg["bev"]["channels"], cfg["bev"]["size"], cfg["bev"]["size"])).astype(np.float32)
    return bev, agents.astype(np.float32), valid, lanes.astype(np.float32), ego_status, plan


def batches(cfg, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        samples = [make_sample(rng, cfg) for _ in range(cfg["batch_size"])]  # trap: small_op_loop host-side data generation
        yield [torch.from_numpy(np.stack(parts)) for parts in zip(*samples)]


class PlanningHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.horizon = cfg["dim"], cfg["horizon"]
        self.bev_proj = nn.Conv2d(cfg["bev"]["channels"], d, 3, 2, 1)
        self.agent_enc = nn.Sequential(nn.Linear(cfg["horizon"] * 2, d), nn.ReLU(), nn.Linear(d, d))
        self.map_enc = nn.Sequential(nn.Linear(cfg["lane_pts"] * 2, d), nn.ReLU(), nn.Linear(d, d))
        self.ego_status_enc = nn.Sequential(nn.Linear(4, d), nn.ReLU(), nn.Linear(d, d))
        self.ego_query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.attn_bev = nn.MultiheadAttention(d, 4, batch_first=True)
        self.attn_scene = nn.MultiheadAttention(d, 4, batch_first=True)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.gru = nn.GRUCell(2, d)
        self.out = nn.Linear(d, 2)

    def forward(self, bev, agents, agent_valid, lanes, ego_status):
        bs = bev.shape[0]
        bev_tokens = self.bev_proj(bev).flatten(2).transpose(1, 2)
        q = self.ego_query.expand(bs, -1, -1) + self.ego_status_enc(ego_status)[:, None]
        q = self.norm1(q + self.attn_bev(q, bev_tokens, bev_tokens)[0])
        scene = torch.cat([self.agent_enc(agents.flatten(2) / 30), self.map_enc(lanes.flatten(2) / 30)], 1)
        pad = torch.cat([agent_valid == 0, torch.zeros(bs, lanes.shape[1], dtype=torch.bool, device=bev.device)], 1)
        q = self.norm2(q + self.attn_scene(q, scene, scene, key_padding_mask=pad)[0])
        h, wp = q[:, 0], bev.new_zeros(bs, 2)
        waypoints = []
        for _ in range(self.horizon):  # trap: small_op_loop autoregressive GRU decoding, each step needs the last
            h = self.gru(wp, h)
            wp = wp + self.out(h)
            waypoints.append(wp)
        return torch.stack(waypoints, 1)


def planning_loss(plan, expert, agents, agent_valid, lanes, cfg):
    w = cfg["loss_weights"]
    lane_dirs = lanes[:, :1, -1] - lanes[:, :1, 0]                               # (B, 1, 2) ego lane heading
    terms = {
        "imitation": F.l1_loss(plan, expert),
        "collision": PL.collision_loss(plan, agents, agent_valid),
        "boundary": PL.boundary_loss(plan, lanes),
        "direction": PL.direction_loss(plan, lane_dirs.expand(-1, plan.shape[1], -1)),
        "comfort": PL.comfort_loss(plan, cfg["dt"]),
    }
    return sum(w[k] * v for k, v in terms.items()), terms  # trap: small_op_loop weighted sum of five loss terms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=CFG["iters"])
    args = ap.parse_args()
    torch.manual_seed(23)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = PlanningHead(CFG).to(device)
    opt_cfg = dict(CFG["optimizer"])
    optimizer = getattr(torch.optim, opt_cfg.pop("type"))(model.parameters(), **opt_cfg)  # gt: optimizer medium opt
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iters)
    data = batches(CFG)
    it = 0
    while it < args.iters:
        bev, agents, valid, lanes, ego_status, expert = (t.to(device) for t in next(data))
        agents = agents.clone()
        agents[valid == 0] = 1e3  # trap: sync masked write moves absent agents far away, no read
        plan = model(bev, agents, valid, lanes, ego_status)
        loss, terms = planning_loss(plan, expert, agents, valid, lanes, CFG)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        scheduler.step()  # trap: sync LR scheduler is host bookkeeping
        l2 = {f"L2@{(t + 1) * CFG['dt']:.1f}s": torch.linalg.norm(plan[:, t] - expert[:, t], dim=-1).mean() for t in (1, 3, 5)}  # gt: small_op_loop low
        print(f"it {it} loss {loss.item():.6f}", {k: round(v.item(), 3) for k, v in l2.items()})  # gt: sync medium
        it += 1


if __name__ == "__main__":
    main()
