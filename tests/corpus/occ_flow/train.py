"""Occupancy-flow forecasting (Waymo occupancy-flow style): a ConvGRU encodes past BEV occupancy, a decoder
predicts occupancy and backward flow for each future waypoint; flow-traced occupancy is supervised by
warping the previous occupancy with the predicted flow."""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PAST, FUTURE, GRID = 4, 4, 48


def render_agents(rng, steps, grid):
    """Boxes moving at constant velocity rasterized into (steps, grid, grid) occupancy + flow (host side)."""
    occ = np.zeros((steps, grid, grid), np.float32)
    flow = np.zeros((steps, 2, grid, grid), np.float32)
    for _ in range(rng.integers(3, 7)):  # trap: small_op_loop host-side rasterization in numpy
        x, y = rng.uniform(8, grid - 8, 2)
        vx, vy = rng.uniform(-1.5, 1.5, 2)
        for t in range(steps):
            cx, cy = int(x + vx * t), int(y + vy * t)
            occ[t, max(cy - 2, 0):cy + 2, max(cx - 3, 0):cx + 3] = 1.0
            flow[t, :, max(cy - 2, 0):cy + 2, max(cx - 3, 0):cx + 3] = np.array([-vx, -vy])[:, None, None]
    return occ, flow


class OccupancyLogs(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        rng = np.random.default_rng(31337 + i)
        occ, flow = render_agents(rng, PAST + FUTURE, GRID)
        return {"past": torch.from_numpy(occ[:PAST, None]), "future": torch.from_numpy(occ[PAST:]),
                "flow": torch.from_numpy(flow[PAST:]), "last": torch.from_numpy(occ[PAST - 1])}


class ConvGRUCell(nn.Module):
    def __init__(self, cin, hidden):
        super().__init__()
        self.gates = nn.Conv2d(cin + hidden, 2 * hidden, 3, padding=1)
        self.cand = nn.Conv2d(cin + hidden, hidden, 3, padding=1)

    def forward(self, x, h):
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        return (1 - z) * h + z * n


class OccFlowNet(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.hidden = hidden
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.gru = ConvGRUCell(16, hidden)
        self.decoder = nn.Sequential(nn.Conv2d(hidden, 64, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(64, FUTURE * 3, 1))

    def forward(self, past):
        bs = past.shape[0]
        h = past.new_zeros(bs, self.hidden, GRID, GRID)
        for t in range(PAST):  # trap: small_op_loop recurrence, each step needs the previous state
            h = self.gru(self.stem(past[:, t]), h)
        out = self.decoder(h).view(bs, FUTURE, 3, GRID, GRID)
        return out[:, :, 0], out[:, :, 1:]                         # occupancy logits, backward flow (cells)


def flow_grid(flow):
    """Backward flow in cells (B, 2, H, W) -> normalized sampling grid for grid_sample."""
    ys, xs = torch.meshgrid(torch.arange(GRID, device=flow.device), torch.arange(GRID, device=flow.device),
                            indexing="ij")
    base = torch.stack([xs, ys], 0).to(flow.dtype)
    pos = base + flow
    return (pos / (GRID - 1) * 2 - 1).permute(0, 2, 3, 1)


def occupancy_flow_loss(occ_logits, flow_pred, batch):
    future, flow_gt, prev = batch["future"], batch["flow"], batch["last"]
    loss_occ = F.binary_cross_entropy_with_logits(occ_logits, future, pos_weight=torch.tensor(4.0, device=future.device))  # gt: sync low
    moving = future[:, :, None].expand_as(flow_gt) > 0
    flow_gt = flow_gt.clone()
    flow_gt[~moving] = 0.0  # trap: sync masked write, not a read
    loss_flow = F.huber_loss(flow_pred * moving, flow_gt, delta=1.0)  # gt: cpu_fallback high; sync low
    loss_trace = 0.0
    for t in range(FUTURE):  # gt: small_op_loop low
        if not future[:, t].any():  # gt: sync medium
            continue
        warped = F.grid_sample(prev[:, None], flow_grid(flow_pred[:, t]), align_corners=True)[:, 0]
        traced = warped * torch.sigmoid(occ_logits[:, t])
        loss_trace = loss_trace + F.binary_cross_entropy(traced.clamp(1e-5, 1 - 1e-5), future[:, t])
        prev = future[:, t]
    return loss_occ + 0.5 * loss_flow + 0.25 * loss_trace / FUTURE


def soft_iou(occ_logits, future):
    p = torch.sigmoid(occ_logits)
    return ((p * future).sum() / (p + future - p * future).sum().clamp(min=1e-5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(12)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loader = torch.utils.data.DataLoader(OccupancyLogs(), batch_size=3, shuffle=True,
                                         generator=torch.Generator().manual_seed(3))
    model = OccFlowNet().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))  # gt: optimizer medium
    ious = []
    for epoch in range(args.epochs):
        for it, batch in enumerate(loader):
            batch = {k: v.to(device) for k, v in batch.items()}
            occ_logits, flow_pred = model(batch["past"])
            loss = occupancy_flow_loss(occ_logits, flow_pred, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            with torch.no_grad():
                iou = soft_iou(occ_logits, batch["future"]).cpu().numpy()  # gt: sync medium
            ious.append(float(iou))  # trap: sync float of a numpy value
            print(f"epoch {epoch} it {it} loss {loss.item():.6f} iou {ious[-1]:.4f}")  # gt: sync medium
    print("mean iou", np.mean(ious))


if __name__ == "__main__":
    main()
