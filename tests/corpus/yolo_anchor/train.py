"""RetinaNet/YOLO-style single-stage 2D detector with max-IoU anchor assignment, synthetic data."""
import argparse
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from assigner import MaxIoUAssigner

STRIDES = (8, 16, 32)
SIZES = (24, 48, 96)
RATIOS = (0.5, 1.0, 2.0)
NUM_CLASSES = 5
IMG = 128


def make_anchors(device):
    all_anchors = []
    for stride, size in zip(STRIDES, SIZES):
        n = IMG // stride
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        ctr = torch.stack([xs, ys], -1).reshape(-1, 1, 2).float() * stride + stride / 2
        wh = torch.tensor([[size * math.sqrt(r), size / math.sqrt(r)] for r in RATIOS])
        all_anchors.append(torch.cat([ctr - wh / 2, ctr + wh / 2], -1).reshape(-1, 4))
    return torch.cat(all_anchors).to(device)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin, cout, s=1):
        super().__init__(nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(ConvBNAct(3, 16, 2), ConvBNAct(16, 24, 2), ConvBNAct(24, 32, 2))
        self.down1 = ConvBNAct(32, 48, 2)
        self.down2 = ConvBNAct(48, 64, 2)
        self.heads = nn.ModuleList([nn.Conv2d(c, len(RATIOS) * (NUM_CLASSES + 4), 1) for c in (32, 48, 64)])

    def forward(self, x):
        p3 = self.stem(x)
        p4 = self.down1(p3)
        p5 = self.down2(p4)
        outs = [self.heads[i](f) for i, f in enumerate((p3, p4, p5))]  # trap: small_op_loop one conv per level
        outs = [o.permute(0, 2, 3, 1).reshape(x.shape[0], -1, NUM_CLASSES + 4) for o in outs]
        out = torch.cat(outs, 1)
        return out[..., :NUM_CLASSES], out[..., NUM_CLASSES:]


class ModelEMA:
    """Exponential moving average of the weights, updated after every optimizer step."""

    def __init__(self, model, decay=0.999):
        self.ema = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 2000))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():  # gt: small_op_loop medium ema
            if v.dtype.is_floating_point:
                v *= d
                v += (1 - d) * msd[k].detach()


def encode(anchors, gt):
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
    return torch.stack([(gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)], -1)


def compute_loss(cls_out, reg_out, anchors, gt_boxes, gt_labels, assigner):
    cls_losses, reg_losses = [], []
    for img_cls, img_reg, boxes, labels in zip(cls_out, reg_out, gt_boxes, gt_labels):  # gt: small_op_loop medium
        assigned, cls_labels, pos = assigner.assign(anchors, boxes, labels)
        target = F.one_hot(cls_labels, NUM_CLASSES + 1)[:, 1:].float()  # trap: sync one_hot with num_classes reads no values on the NPU
        valid = (assigned >= 0).float()[:, None]
        cls_losses.append((F.binary_cross_entropy_with_logits(img_cls, target, reduction="none") * valid).sum()
                          / pos.numel() if pos.numel() > 0 else img_cls.sum() * 0)
        matched = boxes[assigned[pos] - 1]
        reg_losses.append(F.smooth_l1_loss(img_reg[pos], encode(anchors[pos], matched), beta=1 / 9))
    return torch.stack(cls_losses).mean() + torch.stack(reg_losses).mean()


def random_targets(g, batch):
    boxes, labels = [], []
    for _ in range(batch):
        n = int(torch.randint(2, 6, (1,), generator=g))  # trap: sync host generator tensor
        xy = torch.rand(n, 2, generator=g) * (IMG - 40)
        wh = torch.rand(n, 2, generator=g) * 60 + 16
        boxes.append(torch.cat([xy, (xy + wh).clamp(max=IMG)], 1))
        labels.append(torch.randint(1, NUM_CLASSES + 1, (n,), generator=g))
    return boxes, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(9)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = Detector().to(dev)
    ema = ModelEMA(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.937, nesterov=True)  # gt: optimizer medium
    anchors = make_anchors(dev)
    assigner = MaxIoUAssigner()
    g = torch.Generator().manual_seed(1)
    for step in range(args.steps):
        imgs = torch.randn(args.batch, 3, IMG, IMG, generator=g).to(dev)
        boxes, labels = random_targets(g, args.batch)
        boxes, labels = [b.to(dev) for b in boxes], [l.to(dev) for l in labels]
        cls_out, reg_out = model(imgs)
        loss = compute_loss(cls_out, reg_out, anchors, boxes, labels, assigner)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
        ema.update(model)
        print(f"step {step}: loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
