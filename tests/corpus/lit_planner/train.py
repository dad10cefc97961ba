"""Multi-modal motion planner (scene-transformer style): agent history tokens attend to map tokens, K mode
queries decode future trajectories and headings; winner-takes-all regression, von Mises heading NLL."""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import Checkpoint, MiniTrainer, ProgressPrinter, TrainModule, default_root_dir

HIST, FUT, MODES, AGENTS, MAP_PTS, D = 10, 12, 6, 8, 32, 64


class DrivingLogs(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        rng = np.random.default_rng(77 + i)
        hist = np.zeros((AGENTS, HIST, 4), np.float32)
        fut = np.zeros((AGENTS, FUT, 2), np.float32)
        heading = np.zeros((AGENTS, FUT), np.float32)
        for a in range(AGENTS):  # trap: small_op_loop numpy trajectory synthesis per agent
            v, yaw, turn = rng.uniform(2, 12), rng.uniform(-np.pi, np.pi), rng.normal(0, 0.05)
            t = np.arange(-HIST + 1, FUT + 1) * 0.1
            yaws = yaw + turn * np.arange(t.size)
            xy = np.cumsum(np.stack([np.cos(yaws), np.sin(yaws)], -1) * v * 0.1, 0)
            hist[a, :, :2], hist[a, :, 2], hist[a, :, 3] = xy[:HIST], np.cos(yaws[:HIST]), np.sin(yaws[:HIST])
            fut[a], heading[a] = xy[HIST:] - xy[HIST - 1], yaws[HIST:]
        lanes = rng.normal(0, 10, (MAP_PTS, 4)).astype(np.float32)
        return {"hist": torch.from_numpy(hist), "fut": torch.from_numpy(fut),
                "heading": torch.from_numpy(heading), "lanes": torch.from_numpy(lanes)}


def von_mises_nll(pred_angle, log_kappa, target):
    """-log p(target | mu, kappa) for a von Mises density; log I0(k) = log(i0e(k)) + k."""
    kappa = log_kappa.exp().clamp(max=50)
    log_norm = torch.log(2 * math.pi * torch.special.i0e(kappa)) + kappa  # gt: cpu_fallback high; sync low
    return (log_norm - kappa * torch.cos(target - pred_angle)).mean()


class ScenePlanner(TrainModule):
    def __init__(self, lr=5e-4):
        super().__init__()
        self.lr = lr
        self.agent_enc = nn.Sequential(nn.Linear(HIST * 4, D), nn.ReLU(), nn.Linear(D, D))
        self.map_enc = nn.Sequential(nn.Linear(4, D), nn.ReLU(), nn.Linear(D, D))
        self.cross = nn.MultiheadAttention(D, 4, batch_first=True)
        self.mode_query = nn.Parameter(torch.randn(MODES, D) * 0.1)
        self.mode_heads = nn.ModuleList([nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, FUT * 4))
                                         for _ in range(MODES)])
        self.score = nn.Linear(D, 1)

    def forward(self, hist, lanes):
        bs = hist.shape[0]
        agents = self.agent_enc(hist.flatten(2))                                  # (B, A, D)
        ctx, _ = self.cross(agents, self.map_enc(lanes), self.map_enc(lanes))
        tokens = (agents + ctx)[:, :, None] + self.mode_query                       # (B, A, K, D)
        outs = []
        for m in range(MODES):  # gt: small_op_loop low
            outs.append(self.mode_heads[m](tokens[:, :, m]))
        traj = torch.stack(outs, 2).view(bs, AGENTS, MODES, FUT, 4)
        return traj[..., :2].cumsum(-2), traj[..., 2], traj[..., 3], self.score(tokens).squeeze(-1)

    def training_step(self, batch, batch_idx):
        xy, angle, log_kappa, logits = self(batch["hist"], batch["lanes"])
        fut, heading = batch["fut"], batch["heading"]
        num = fut.shape[0] * fut.shape[1]  # trap: sync shape arithmetic reads no values
        reg, cls, ang = 0.0, 0.0, 0.0
        for a in range(AGENTS):  # gt: small_op_loop high wta
            ade = (xy[:, a] - fut[:, a, None]).norm(dim=-1).mean(-1)              # (B, K)
            for b in range(fut.shape[0]):  # gt: small_op_loop high wta
                best = ade[b].argmin().item()  # gt: sync medium
                reg = reg + F.smooth_l1_loss(xy[b, a, best], fut[b, a], reduction="sum")
                ang = ang + von_mises_nll(angle[b, a, best], log_kappa[b, a, best], heading[b, a])
            cls = cls + F.cross_entropy(logits[:, a], ade.argmin(-1), reduction="sum")
        loss = (reg / FUT + cls + ang) / num
        self.log("loss", loss, prog_bar=True)
        self.log("minADE", ade.min(-1).values.mean(), prog_bar=True)
        return {"loss": loss}

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)  # gt: optimizer medium
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 5))
        return optimizer, scheduler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(7)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = torch.utils.data.DataLoader(DrivingLogs(), batch_size=3, shuffle=False)
    trainer = MiniTrainer(args.epochs, callbacks=[ProgressPrinter(), Checkpoint(default_root_dir())],
                          gradient_clip_val=1.0, device=device)
    trainer.fit(ScenePlanner(), loader)


if __name__ == "__main__":
    main()
