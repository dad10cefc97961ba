"""Detector parts registered by name: a small ResNet backbone, an FPN-less neck and a center-heatmap head."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from registry import LOSSES, MODELS


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # gt: fused_op low addrelu
        out = self.relu(out)  # gt: fused_op low addrelu
        return out


@MODELS.register_module()
class TinyResNet(nn.Module):
    def __init__(self, in_channels, stage_channels, strides):
        super().__init__()
        layers, c = [], in_channels
        for planes, stride in zip(stage_channels, strides):
            layers.append(BasicBlock(c, planes, stride))
            c = planes
        self.stages = nn.ModuleList(layers)

    def forward(self, x):
        for stage in self.stages:  # trap: small_op_loop three residual stages, big convs each
            x = stage(x)
        return x


@LOSSES.register_module()
class GaussianFocalLoss(nn.Module):
    def __init__(self, alpha=2.0, gamma=4.0, loss_weight=1.0):
        super().__init__()
        self.alpha, self.gamma, self.loss_weight = alpha, gamma, loss_weight

    def forward(self, pred, target):
        pred = pred.sigmoid().clamp(1e-4, 1 - 1e-4)
        pos = target.eq(1).float()
        pos_loss = -pred.log() * (1 - pred).pow(self.alpha) * pos
        neg_loss = -(1 - pred).log() * pred.pow(self.alpha) * (1 - target).pow(self.gamma) * (1 - pos)
        num_pos = max(int(pos.sum()), 1)  # gt: sync medium
        return self.loss_weight * (pos_loss + neg_loss).sum() / num_pos


@LOSSES.register_module()
class WeightedL1Loss(nn.Module):
    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, pred, target, weight):
        return self.loss_weight * ((pred - target).abs() * weight).sum() / weight.sum().clamp(min=1.0)


@MODELS.register_module()
class CenterHeatmapHead(nn.Module):
    def __init__(self, in_channels, num_classes, max_objs, min_sigma, loss_heatmap, loss_bbox):
        super().__init__()
        self.num_classes, self.max_objs, self.min_sigma = num_classes, max_objs, min_sigma
        self.heatmap = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, num_classes, 1))
        self.bbox = nn.Sequential(nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 4, 1))
        self.heatmap[-1].bias.data.fill_(-2.19)
        self.loss_heatmap = LOSSES.build(loss_heatmap)
        self.loss_bbox = LOSSES.build(loss_bbox)

    def forward(self, feat):
        return self.heatmap(feat), self.bbox(feat)

    def render_targets(self, centers, sizes, labels, valid, shape):
        """Gaussian blobs at object centers, one object slot at a time (centers in feature-map cells)."""
        bs = centers.shape[0]  # trap: sync shape arithmetic reads no values
        h, w = shape
        ys = torch.arange(h, device=centers.device, dtype=centers.dtype).view(1, h, 1)
        xs = torch.arange(w, device=centers.device, dtype=centers.dtype).view(1, 1, w)
        heat = centers.new_zeros(bs, self.num_classes, h, w)
        for k in range(self.max_objs):  # gt: fused_op high gauss; small_op_loop high gauss
            cx, cy = centers[:, k, 0].view(bs, 1, 1), centers[:, k, 1].view(bs, 1, 1)
            sigma = (sizes[:, k].min(-1).values / 6).clamp(min=self.min_sigma).view(bs, 1, 1)
            blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2)) * valid[:, k].view(bs, 1, 1)
            onehot = F.one_hot(labels[:, k], self.num_classes).to(blob.dtype)  # trap: sync one_hot with num_classes needs no read
            heat = torch.maximum(heat, blob[:, None] * onehot[:, :, None, None])
        peak = heat.flatten(2).amax(-1, keepdim=True).unsqueeze(-1)
        heat = torch.where(heat >= peak - 1e-6, torch.where(peak > 0, torch.ones_like(heat), heat), heat)
        return heat

    def loss(self, preds, targets):
        cls_pred, box_pred = preds
        heat = self.render_targets(targets["centers"], targets["sizes"], targets["labels"], targets["valid"],
                                   cls_pred.shape[-2:])
        box_target = targets["box_map"]
        box_weight = (box_target.abs().sum(1, keepdim=True) > 0).float()
        box_target[box_weight.expand_as(box_target) == 0] = 0.0  # trap: sync masked write, not a read
        return {"loss_heatmap": self.loss_heatmap(cls_pred, heat),
                "loss_bbox": self.loss_bbox(box_pred, box_target, box_weight)}


@MODELS.register_module()
class CenterNetDetector(nn.Module):
    def __init__(self, backbone, head):
        super().__init__()
        self.backbone = MODELS.build(backbone)
        self.head = MODELS.build(head)

    def forward_train(self, img, targets):
        losses = self.head.loss(self.head(self.backbone(img)), targets)
        return sum(losses.values()), losses
