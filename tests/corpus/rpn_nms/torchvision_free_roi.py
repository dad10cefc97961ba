"""RoI max pooling without torchvision: crop each RoI with an affine grid and adaptive-max-pool it."""
import torch
import torch.nn.functional as F


def roi_pool(feat, rois, out_size, spatial_scale):
    """feat (B, C, H, W); rois (R, 5) = batch index, x1, y1, x2, y2 in image pixels."""
    _, _, h, w = feat.shape
    boxes = rois[:, 1:] * spatial_scale
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 / w * 2 - 1
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 / h * 2 - 1
    sx = (boxes[:, 2] - boxes[:, 0]).clamp(min=1) / w
    sy = (boxes[:, 3] - boxes[:, 1]).clamp(min=1) / h
    theta = torch.zeros(len(rois), 2, 3, device=feat.device, dtype=feat.dtype)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, cx, sy, cy
    grid = F.affine_grid(theta, (len(rois), feat.shape[1], 2 * out_size, 2 * out_size), align_corners=False)
    crops = F.grid_sample(feat[rois[:, 0].long()], grid, align_corners=False)
    return F.adaptive_max_pool2d(crops, out_size)
