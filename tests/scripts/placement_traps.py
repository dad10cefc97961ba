"""A small detector-style training loop with real host-device syncs next to look-alikes that never touch
the device (tests/test_placement.py). Lines tagged `# real:` must be found, lines tagged `# trap:` must
stay silent."""
import numpy as np
import torch
import torch.nn as nn

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LOSS_WEIGHTS = torch.tensor([1.0, 0.5])          # a CPU config tensor


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x):
        return self.net(x)


def make_targets(n):
    targets = torch.zeros(n, 8)
    for i in range(n):                            # trap: host-side target generation loop
        targets[i] = torch.rand(8) * (i % 3)      # trap: host-side target generation
        targets[i, 0] = float(i)                  # trap: host-side target generation
    return targets


def decode(pred):
    out = torch.zeros_like(pred[:, :2])
    for i in range(pred.shape[0]):                # real: device small-op loop
        out[i] = pred[i, :2] * 2 + pred[i, 2:4]   # real: device small-op loop
    return out


def main():
    torch.manual_seed(0)
    model = Head().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    anchors = torch.linspace(-1, 1, 8).to(device)    # placed before recording starts
    for step in range(8):
        # 128 rows: the host-side targets take well over NPA503's 1 ms per step on a fast machine too
        x = torch.randn(128, 16)
        targets = make_targets(128)
        x, targets = x.to(device), targets.to(device)
        pred = model(x)
        boxes = decode(pred)
        loss = (pred - targets).pow(2).mean() * LOSS_WEIGHTS[0] + boxes.abs().mean() * LOSS_WEIGHTS[1]
        pred_d = pred.detach()
        pred_d[pred_d < -3] = 0.0                 # trap: mask write
        kept = pred_d[pred_d > 0.5]               # real: mask read on a device tensor
        if loss > 100:                            # real: bool on a device tensor
            print("diverged")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()                          # trap: AdamW step counters live on the host
        scale = LOSS_WEIGHTS[1].item()            # trap: item on a CPU config tensor
        stats = torch.tensor(np.array([step, kept.numel()]))
        total = stats.sum().item()                # trap: item on a numpy-born tensor
        snapshot = pred_d.cpu()                   # real: device -> host copy
        first = snapshot[0, 0].item()             # trap: item on a tensor already on the host
        value = loss.item()                       # real: item on the loss
        lowest = anchors[0].item()                # real: item on a device tensor placed at start-up
    print(value, scale, total, first, lowest)


if __name__ == "__main__":
    main()
