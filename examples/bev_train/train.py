"""A small BEV perception + planning model trained on synthetic data.

Written to look like real autonomous-driving training code, so `npu-advise profile` has something honest
to find. It runs on a CPU in a few seconds:

    python examples/bev_train/train.py --epochs 1

The model: six camera images -> a ResNet-style backbone -> per-camera feature pyramids -> BEV queries
that read the pyramids with multi-scale deformable attention -> three heads:
  * a map head predicting lane polylines (resampled with a per-point interpolation loop, and a
    valid-length mask built in a Python loop),
  * a detection-style heatmap head,
  * a trajectory head predicting K modes with 2x2 covariance matrices, trained with a Gaussian NLL that
    calls torch.logdet.

Lines carrying an `npa-example` marker comment (the tag follows its colon) are the known performance
anti-patterns on Ascend NPUs (see the project's seed guide); the tests find them by those markers.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CAMS = 6
IMG_H, IMG_W = 64, 96
BEV_H, BEV_W = 16, 16
EMBED_DIMS = 64
NUM_HEADS = 4
NUM_LEVELS = 2
NUM_POINTS = 4
NUM_LANES = 6           # polylines per sample
LANE_CTRL_PTS = 4       # control points the head predicts per lane
LANE_PTS = 19           # resampled points per lane: 3 segments x (1 + 5 interpolated) + 1
NUM_MODES = 3           # trajectory modes
TRAJ_STEPS = 8


# ----------------------------------------------------------------------------------------------
# Backbone
# ----------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity  # npa-example: add-relu
        out = self.relu(out)
        return out


class ResNetLite(nn.Module):
    """ResNet-18-shaped, narrower: stem + 3 stages; returns the last two stages (strides 8 and 16)."""

    def __init__(self, widths=(32, 64, 64)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)  # npa-example: maxpool
        self.layer1 = nn.Sequential(BasicBlock(widths[0], widths[0]), BasicBlock(widths[0], widths[0]))
        self.layer2 = nn.Sequential(BasicBlock(widths[0], widths[1], 2), BasicBlock(widths[1], widths[1]))
        self.layer3 = nn.Sequential(BasicBlock(widths[1], widths[2], 2), BasicBlock(widths[2], widths[2]))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4]


# ----------------------------------------------------------------------------------------------
# Multi-scale deformable attention (the pytorch reference implementation, as in mmcv / BEVFormer)
# ----------------------------------------------------------------------------------------------
def multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    """value: (bs, num_keys, heads, dims); sampling_locations: (bs, q, heads, levels, points, 2) in [0, 1]."""
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([int(h) * int(w) for h, w in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(value_spatial_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, int(h), int(w))
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_l = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                         align_corners=False)
        sampling_value_list.append(sampling_value_l)
    attention_weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                                  num_levels * num_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(bs, num_heads * embed_dims, num_queries).transpose(1, 2).contiguous()


class MSDeformableAttention(nn.Module):
    def __init__(self, embed_dims=EMBED_DIMS, num_heads=NUM_HEADS, num_levels=NUM_LEVELS, num_points=NUM_POINTS):
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, query, reference_points, value, spatial_shapes):
        bs, num_query, _ = query.shape
        value = self.value_proj(value).view(bs, value.shape[1], self.num_heads, -1)
        offsets = self.sampling_offsets(query).view(bs, num_query, self.num_heads, self.num_levels,
                                                    self.num_points, 2)
        weights = self.attention_weights(query).view(bs, num_query, self.num_heads,
                                                     self.num_levels * self.num_points)
        weights = weights.softmax(-1).view(bs, num_query, self.num_heads, self.num_levels, self.num_points)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(query.dtype)
        sampling_locations = (reference_points[:, :, None, None, None, :]
                              + offsets / normalizer[None, None, None, :, None, :])
        output = multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, weights)  # npa-example: msda
        return self.output_proj(output)


# ----------------------------------------------------------------------------------------------
# BEV encoder and heads
# ----------------------------------------------------------------------------------------------
class BEVEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.bev_queries = nn.Parameter(torch.randn(BEV_H * BEV_W, EMBED_DIMS) * 0.02)
        self.cam_embed = nn.Parameter(torch.randn(NUM_CAMS, EMBED_DIMS) * 0.02)
        self.attn = MSDeformableAttention()
        self.norm = nn.LayerNorm(EMBED_DIMS)
        self.ffn = nn.Sequential(nn.Linear(EMBED_DIMS, 2 * EMBED_DIMS), nn.ReLU(), nn.Linear(2 * EMBED_DIMS, EMBED_DIMS))
        ys, xs = torch.meshgrid(torch.linspace(0.5 / BEV_H, 1 - 0.5 / BEV_H, BEV_H),
                                torch.linspace(0.5 / BEV_W, 1 - 0.5 / BEV_W, BEV_W), indexing="ij")
        self.register_buffer("ref_points", torch.stack([xs, ys], -1).view(1, -1, 2), persistent=False)

    def forward(self, feats):
        # feats: list over levels of (bs * cams, C, h, w); flatten each camera's pyramid into one value
        bs_cams = feats[0].shape[0]
        bs = bs_cams // NUM_CAMS
        shapes = torch.tensor([[f.shape[-2], f.shape[-1]] for f in feats], dtype=torch.long)
        value = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)       # (bs*cams, keys, C)
        value = value + self.cam_embed.repeat(bs, 1)[:, None, :]
        query = self.bev_queries[None].expand(bs_cams, -1, -1)
        ref = self.ref_points.expand(bs_cams, -1, -1)
        per_cam = self.attn(query, ref, value, shapes)                            # (bs*cams, Q, C)
        bev = per_cam.view(bs, NUM_CAMS, -1, EMBED_DIMS).mean(1)
        bev = self.norm(bev + self.bev_queries[None])
        return bev + self.ffn(bev)                                                # (bs, Q, C)


def interpolate(start_pt, end_pt, inter_num):
    res = torch.zeros((inter_num, 2), dtype=start_pt.dtype, device=start_pt.device)
    num_len = inter_num + 1  # segment num.
    for i in range(1, num_len):
        ratio = i / num_len
        res[i - 1] = (1 - ratio) * start_pt + ratio * end_pt  # npa-example: interpolate-loop
    return res


class LaneHead(nn.Module):
    """Predicts LANE_CTRL_PTS control points per lane and densifies each segment to LANE_PTS points."""

    def __init__(self):
        super().__init__()
        self.lane_queries = nn.Parameter(torch.randn(NUM_LANES, EMBED_DIMS) * 0.02)
        self.proj = nn.Linear(EMBED_DIMS, EMBED_DIMS)
        self.reg = nn.Linear(EMBED_DIMS, LANE_CTRL_PTS * 2)

    def forward(self, bev):
        attn = torch.softmax(self.proj(self.lane_queries) @ bev.transpose(1, 2) / math.sqrt(EMBED_DIMS), -1)
        lane_feat = attn @ bev                                                    # (bs, lanes, C)
        ctrl = self.reg(lane_feat).sigmoid().view(-1, NUM_LANES, LANE_CTRL_PTS, 2)
        return ctrl

    @staticmethod
    def densify(ctrl):
        """(bs, lanes, ctrl, 2) -> (bs, lanes, LANE_PTS, 2) by interpolating between control points."""
        per_seg = (LANE_PTS - 1) // (LANE_CTRL_PTS - 1) - 1
        lanes = []
        for lane in ctrl.flatten(0, 1):
            pts = []
            for j in range(LANE_CTRL_PTS - 1):
                pts += [lane[j:j + 1], interpolate(lane[j], lane[j + 1], per_seg)]
            lanes.append(torch.cat(pts + [lane[-1:]], 0))
        return torch.stack(lanes).view(*ctrl.shape[:2], LANE_PTS, 2)


class HeatmapHead(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(EMBED_DIMS, EMBED_DIMS, 3, 1, 1), nn.ReLU(),
                                 nn.Conv2d(EMBED_DIMS, num_classes, 1))

    def forward(self, bev):
        return self.net(bev.transpose(1, 2).reshape(bev.shape[0], EMBED_DIMS, BEV_H, BEV_W))


class TrajectoryHead(nn.Module):
    """K trajectory modes, each point with a 2x2 covariance from a Cholesky factor (so it is SPD)."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(EMBED_DIMS, 128), nn.ReLU(),
                                 nn.Linear(128, NUM_MODES * (TRAJ_STEPS * 5 + 1)))

    def forward(self, bev):
        out = self.mlp(bev.mean(1)).view(-1, NUM_MODES, TRAJ_STEPS * 5 + 1)
        confidences = out[..., -1].log_softmax(-1)
        params = out[..., :-1].view(-1, NUM_MODES, TRAJ_STEPS, 5)
        predictions = params[..., :2].cumsum(2)
        l11 = F.softplus(params[..., 2]) + 1e-3
        l22 = F.softplus(params[..., 3]) + 1e-3
        l21 = params[..., 4]
        zeros = torch.zeros_like(l11)
        chol = torch.stack([torch.stack([l11, zeros], -1), torch.stack([l21, l22], -1)], -2)
        covariance_matrices = chol @ chol.transpose(-1, -2)
        return predictions, confidences, covariance_matrices


def nll_with_covariances(gt, predictions, confidences, avails, covariance_matrices):
    precision_matrices = torch.inverse(covariance_matrices)
    gt = torch.unsqueeze(gt, 1)
    avails = avails[:, None, :, None]
    coordinates_delta = (gt - predictions).unsqueeze(-1)
    errors = coordinates_delta.permute(0, 1, 2, 4, 3) @ precision_matrices @ coordinates_delta
    errors = avails * (-0.5 * errors.squeeze(-1) - 0.5 * torch.logdet(covariance_matrices).unsqueeze(-1))  # npa-example: logdet
    errors = confidences + errors.squeeze(-1).sum(-1)
    return -torch.logsumexp(errors, dim=-1).mean()


class BEVModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNetLite()
        self.neck = nn.ModuleList([nn.Conv2d(64, EMBED_DIMS, 1), nn.Conv2d(64, EMBED_DIMS, 1)])
        self.encoder = BEVEncoder()
        self.lane_head = LaneHead()
        self.heatmap_head = HeatmapHead()
        self.traj_head = TrajectoryHead()

    def forward(self, imgs):
        bs = imgs.shape[0]
        feats = self.backbone(imgs.flatten(0, 1))
        feats = [neck(f) for neck, f in zip(self.neck, feats)]
        bev = self.encoder(feats)
        assert bev.shape[0] == bs
        return self.lane_head(bev), self.heatmap_head(bev), self.traj_head(bev)


# ----------------------------------------------------------------------------------------------
# Synthetic data and training
# ----------------------------------------------------------------------------------------------
def synthetic_batch(batch_size, generator):
    imgs = torch.randn(batch_size, NUM_CAMS, 3, IMG_H, IMG_W, generator=generator)
    gt_lanes = torch.rand(batch_size, NUM_LANES, LANE_PTS, 2, generator=generator)
    valid_len = torch.randint(LANE_PTS // 2, LANE_PTS + 1, (batch_size * NUM_LANES,), generator=generator)
    heatmap = (torch.rand(batch_size, 3, BEV_H, BEV_W, generator=generator) > 0.95).float()
    gt_traj = torch.randn(batch_size, TRAJ_STEPS, 2, generator=generator).cumsum(1)
    avails = (torch.rand(batch_size, TRAJ_STEPS, generator=generator) > 0.1).float()
    return imgs, gt_lanes, valid_len, heatmap, gt_traj, avails


def lane_loss(pred_ctrl, gt_lanes, valid_len):
    pred_pts = LaneHead.densify(pred_ctrl).flatten(0, 1)                          # (bs*lanes, P, 2)
    gt_pts = gt_lanes.flatten(0, 1)
    gt_pts_mask = torch.zeros(gt_pts.shape[:2], dtype=gt_pts.dtype, device=gt_pts.device)
    for i, ll in enumerate(valid_len):
        gt_pts_mask[i][:ll] = 1  # npa-example: valid-len-mask
    diff = (pred_pts - gt_pts).abs().sum(-1) * gt_pts_mask
    return diff.sum() / gt_pts_mask.sum().clamp(min=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train a small BEV model on synthetic data.")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = BEVModel().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)  # npa-example: adamw
    model.train()
    for epoch in range(args.epochs):
        started = time.perf_counter()
        for step in range(args.steps_per_epoch):
            batch = synthetic_batch(args.batch_size, generator)
            imgs, gt_lanes, valid_len, heatmap, gt_traj, avails = (t.to(device) for t in batch)
            lanes, heat_logits, (traj, conf, cov) = model(imgs)
            loss_lane = lane_loss(lanes, gt_lanes, valid_len)
            loss_heat = F.binary_cross_entropy_with_logits(heat_logits, heatmap)
            loss_traj = nll_with_covariances(gt_traj, traj, conf, avails, cov) / TRAJ_STEPS
            loss = loss_lane + loss_heat + 0.1 * loss_traj
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = loss.item()  # npa-example: item-sync
            if step % 4 == 0:
                print(f"epoch {epoch} step {step}/{args.steps_per_epoch} loss {loss_value:.4f}", flush=True)
        print(f"epoch {epoch} done in {time.perf_counter() - started:.2f} s", flush=True)


if __name__ == "__main__":
    main()
