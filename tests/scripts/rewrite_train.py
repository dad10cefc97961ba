"""A small training script whose step holds one loop of each shape the candidate generators rewrite: a
per-sample map loop, a per-class reduction loop, per-row length reads, a per-camera sum, a device assert.
Run as `python rewrite_train.py`; prints the loss of every step."""
import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES, CAMS, ROWS, WIDTH = 10, 8, 12, 16


def normalize_points(points):
    out = []
    for p in points:
        centre = p.mean(0)
        out.append((p - centre) / (p - centre).norm(dim=-1).amax().clamp(min=1e-6))
    return torch.stack(out)


def class_centres(feats, labels):
    centres = torch.zeros(NUM_CLASSES, feats.shape[1])
    for c in range(NUM_CLASSES):
        centres[c] = feats[labels == c].sum(0)
    return centres


def row_mask(lengths):
    lengths = torch.as_tensor(lengths)
    mask = torch.zeros(len(lengths), WIDTH)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        mask[i, n:] = 0.1
    return mask


def fuse_cameras(cam_feats, weights):
    fused = torch.zeros(cam_feats.shape[0], cam_feats.shape[2])
    for cam in range(CAMS):
        fused = fused + torch.sigmoid(cam_feats[:, cam]) * weights[cam]
    return fused


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, WIDTH)
        self.cam = nn.Linear(WIDTH, WIDTH)
        self.weights = nn.Parameter(torch.ones(CAMS))

    def forward(self, points, labels, lengths):
        pts = normalize_points(points)
        feats = self.enc(pts).mean(1)                                      # (B, WIDTH)
        centres = class_centres(feats, labels)
        mask = row_mask(lengths)
        cam_feats = self.cam(feats)[:, None, :].expand(-1, CAMS, -1) * torch.linspace(0.5, 1.5, CAMS)[None, :, None]
        fused = fuse_cameras(cam_feats, self.weights)
        loss = (fused * mask[: fused.shape[0]]).pow(2).mean() + centres.pow(2).mean() * 1e-3
        assert torch.isfinite(loss).all(), "loss is not finite"
        return loss


def main():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Net().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(6):
        points = torch.randn(ROWS, 20, 3, generator=gen).to(device)
        labels = torch.randint(0, NUM_CLASSES, (ROWS,), generator=gen).to(device)
        lengths = torch.randint(1, WIDTH, (ROWS,), generator=gen).to(device)
        loss = model(points, labels, lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step} loss {loss.item():.8f}", flush=True)


if __name__ == "__main__":
    main()
