"""Detection losses: sigmoid focal loss (CUDA kernel from mmcv when present) and GIoU for BEV boxes."""
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from mmcv.ops import sigmoid_focal_loss as _sigmoid_focal_loss_cuda
except ImportError:
    _sigmoid_focal_loss_cuda = None


def py_sigmoid_focal_loss(pred, target, gamma=2.0, alpha=0.25):
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight


class FocalLoss(nn.Module):
    def __init__(self, gamma=2.0, alpha=0.25, loss_weight=1.0):
        super().__init__()
        self.gamma, self.alpha, self.loss_weight = gamma, alpha, loss_weight

    def forward(self, pred, target, avg_factor):
        num_classes = pred.size(1)
        if torch.cuda.is_available() and pred.is_cuda:  # gt: migration medium; fused_op medium
            loss = _sigmoid_focal_loss_cuda(pred.contiguous(), target.contiguous(), self.gamma, self.alpha, None,
                                            "none")
        else:
            one_hot = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]  # trap: sync one_hot with num_classes reads no values on the NPU
            loss = py_sigmoid_focal_loss(pred, one_hot, self.gamma, self.alpha)
        return self.loss_weight * loss.sum() / avg_factor


def bev_giou(a, b):
    """Axis-aligned GIoU of BEV boxes (cx, cy, w, l) -> (N,)."""
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(min=0).prod(-1)  # trap: sync prod of a device tensor does not read it on the host
    union = a[:, 2:].prod(-1) + b[:, 2:].prod(-1) - inter  # trap: sync prod of a device tensor does not read it on the host
    hull = (torch.max(a2, b2) - torch.min(a1, b1)).prod(-1)  # trap: sync prod of a device tensor does not read it on the host
    return inter / union - (hull - union) / hull
