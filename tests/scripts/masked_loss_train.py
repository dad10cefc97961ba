"""A small box-regression training loop with masked losses: one in a loss function (verified beside the original),
one guarded in the training loop itself (verified by the whole-run check)."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


def box_loss(pred, target, labels):
    pos = labels > 0
    return ((pred[pos] - target[pos]).abs() * 2).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 7)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(args.steps):
        x = torch.randn(64, 8, device=device)
        target = torch.cat([x[:, :4], x[:, 4:].sum(-1, keepdim=True).expand(-1, 3)], 1)
        labels = torch.randint(0, 3, (64,), device=device) * (step % 4 != 3)
        fg = labels > 1
        out = model(x)
        loss_reg = F.smooth_l1_loss(out[fg], target[fg]) if fg.sum() > 0 else out.sum() * 0
        loss = loss_reg + box_loss(out, target, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.detach().double():.6f}")


if __name__ == "__main__":
    main()
