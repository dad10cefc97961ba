"""Sparse4D-style sparse query detector: anchors projected into every camera, features gathered by
deformable aggregation over cameras and feature levels."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

CAMS, LEVELS, GROUPS, PTS = 6, 3, 8, 4
EMBED = 64
NUM_ANCHOR = 32


def project_points(points, lidar2img):
    """points (B, A, P, 3) -> normalized image coords (B, cams, A, P, 2) and depth validity."""
    homo = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    cam = torch.einsum("bnij,bapj->bnapi", lidar2img, homo)
    depth = cam[..., 2:3]
    uv = cam[..., :2] / depth.clamp(min=1e-5)
    return uv, depth.squeeze(-1) > 0.1


def deformable_feature_aggregation(feature_maps, key_points, lidar2img, weights, image_wh):
    """feature_maps: list over levels of (B, cams, C, H, W); weights (B, A, cams, levels, P, groups)."""
    bs, num_anchor, num_pts = key_points.shape[:3]
    uv, valid = project_points(key_points, lidar2img)
    grid = (uv / image_wh) * 2 - 1                                              # (B, cams, A, P, 2)
    channels = feature_maps[0].shape[2]
    out = key_points.new_zeros(bs, num_anchor, channels)
    for cam in range(CAMS):  # gt: fused_op high dfa; small_op_loop medium dfa
        for lvl, feat in enumerate(feature_maps):  # gt: fused_op high dfa; small_op_loop medium dfa
            sampled = F.grid_sample(feat[:, cam], grid[:, cam], align_corners=False)   # (B, C, A, P)
            sampled = sampled.view(bs, GROUPS, channels // GROUPS, num_anchor, num_pts)
            w = weights[:, :, cam, lvl].permute(0, 3, 1, 2).unsqueeze(2)              # (B, G, 1, A, P)
            w = w * valid[:, cam].view(bs, 1, 1, num_anchor, num_pts)
            out = out + (sampled * w).sum(-1).flatten(1, 2).transpose(1, 2)
    return out


class KeyPointsGenerator(nn.Module):
    def __init__(self):
        super().__init__()
        self.fix_scale = nn.Parameter(torch.tensor([[0.0, 0.0, 0.0], [0.45, 0, 0], [-0.45, 0, 0], [0, 0.45, 0]]),
                                      requires_grad=False)
        self.learnable = nn.Linear(EMBED, PTS * 3)

    def forward(self, anchor, feat):
        size = anchor[..., 3:6].exp()
        pts = self.fix_scale[None, None] * size[:, :, None]
        pts = pts + 0.1 * self.learnable(feat).view(*feat.shape[:2], PTS, 3).tanh()
        return pts + anchor[:, :, None, :3]


class Sparse4DHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.cat([torch.rand(NUM_ANCHOR, 3) * 40 - 20, torch.zeros(NUM_ANCHOR, 3)], 1))
        self.instance_feature = nn.Parameter(torch.zeros(NUM_ANCHOR, EMBED))
        self.kps = KeyPointsGenerator()
        self.weights_fc = nn.Linear(EMBED, CAMS * LEVELS * PTS * GROUPS)
        self.out_fc = nn.Linear(EMBED, EMBED)
        self.cls = nn.Linear(EMBED, 3)
        self.reg = nn.Linear(EMBED, 6)

    def forward(self, feature_maps, lidar2img, image_wh):
        bs = lidar2img.shape[0]
        anchor = self.anchor[None].expand(bs, -1, -1)
        feat = self.instance_feature[None].expand(bs, -1, -1)
        key_points = self.kps(anchor, feat)
        w = self.weights_fc(feat).view(bs, NUM_ANCHOR, CAMS, LEVELS, PTS, GROUPS)
        w = w.flatten(2, 4).softmax(2).view(bs, NUM_ANCHOR, CAMS, LEVELS, PTS, GROUPS)
        feat = feat + self.out_fc(deformable_feature_aggregation(feature_maps, key_points, lidar2img, w, image_wh))
        return self.cls(feat), anchor + self.reg(feat)


class FPNBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
        self.lateral = nn.ModuleList([nn.Conv2d(32, EMBED, 1) for _ in range(LEVELS)])

    def forward(self, x):
        c1 = self.c1(x)
        c2 = self.c2(c1)
        c3 = self.c3(c2)
        return [lat(c) for lat, c in zip(self.lateral, (c1, c2, c3))]  # trap: small_op_loop one conv per level


def synthetic_sample(g):
    imgs = torch.randn(CAMS, 3, 32, 48, generator=g)
    lidar2img = torch.zeros(CAMS, 4, 4)
    for i in range(CAMS):  # trap: small_op_loop calibration built on the host
        yaw = torch.tensor(i * 6.2832 / CAMS)
        rot = torch.stack([torch.stack([-torch.sin(yaw), torch.cos(yaw), torch.tensor(0.)]),
                           torch.tensor([0., 0., -1.]),
                           torch.stack([torch.cos(yaw), torch.sin(yaw), torch.tensor(0.)])])
        intr = torch.tensor([[24., 0, 24], [0, 24., 16], [0, 0, 1]])
        lidar2img[i, :3, :3] = intr @ rot
        lidar2img[i, 3, 3] = 1
    gt_cls = torch.randint(0, 3, (NUM_ANCHOR,), generator=g)
    gt_box = torch.randn(NUM_ANCHOR, 6, generator=g)
    return imgs, lidar2img, gt_cls, gt_box


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, head = FPNBackbone().to(device), Sparse4DHead().to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)  # gt: optimizer medium
    g = torch.Generator().manual_seed(0)
    image_wh = torch.tensor([48.0, 32.0], device=device)
    for step in range(args.steps):
        samples = [synthetic_sample(g) for _ in range(args.batch_size)]
        imgs, lidar2img, gt_cls, gt_box = (torch.stack(x).to(device) for x in zip(*samples))
        feats = backbone(imgs.flatten(0, 1))
        feats = [f.view(args.batch_size, CAMS, *f.shape[1:]) for f in feats]
        cls, box = head(feats, lidar2img, image_wh)
        loss = F.cross_entropy(cls.flatten(0, 1), gt_cls.flatten()) + F.smooth_l1_loss(box, gt_box)
        if not torch.isfinite(loss):  # gt: sync medium
            raise RuntimeError("loss diverged")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync the optimizer keeps its bookkeeping on the host
        print(f"step {step} loss {loss.detach().cpu().item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
