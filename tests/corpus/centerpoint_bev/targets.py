"""CenterPoint-style target assignment: gaussian heatmaps and regression targets per object."""
import math

import torch


def gaussian_radius(det_size, min_overlap=0.5):
    """Smallest radius so that a box shifted by it keeps `min_overlap` IoU (CornerNet's three cases)."""
    height, width = det_size
    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.min(torch.min(r1, r2), r3)


def gaussian_2d(diameter, sigma, device):
    m = (diameter - 1) / 2.0
    coords = torch.arange(-m, m + 1, device=device)
    y, x = coords[:, None], coords[None, :]
    h = torch.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < torch.finfo(h.dtype).eps * h.max()] = 0  # trap: sync masked write, not a read
    return h


def draw_heatmap_gaussian(heatmap, center, radius, k=1.0):
    diameter = 2 * radius + 1
    gaussian = gaussian_2d(diameter, sigma=diameter / 6, device=heatmap.device)
    x, y = int(center[0]), int(center[1])  # gt: sync medium draw-int
    height, width = heatmap.shape[0:2]
    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)
    masked_heatmap = heatmap[y - top:y + bottom, x - left:x + right]
    masked_gaussian = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        torch.max(masked_heatmap, masked_gaussian * k, out=masked_heatmap)
    return heatmap


def get_targets_single(gt_boxes, gt_labels, num_objs, cfg):  # gt: fused_op high gauss
    """Heatmap (classes, H, W), box targets (max_objs, 6), flat indices and a mask for one sample."""
    grid_h, grid_w = cfg["grid"]
    heatmap = gt_boxes.new_zeros((cfg["num_classes"], grid_h, grid_w))
    anno_box = gt_boxes.new_zeros((cfg["max_objs"], 6))
    ind = gt_boxes.new_zeros(cfg["max_objs"], dtype=torch.long)
    mask = gt_boxes.new_zeros(cfg["max_objs"], dtype=torch.uint8)
    voxel = cfg["voxel_size"]
    x_min, y_min = cfg["pc_range"][:2]
    for k in range(num_objs):  # gt: fused_op high gauss; small_op_loop high gauss; sync low
        width = gt_boxes[k, 3] / voxel
        length = gt_boxes[k, 4] / voxel
        radius = gaussian_radius((length, width), min_overlap=cfg["gaussian_overlap"])
        radius = max(cfg["min_radius"], int(radius))  # gt: sync medium radius-int
        coor_x = (gt_boxes[k, 0] - x_min) / voxel
        coor_y = (gt_boxes[k, 1] - y_min) / voxel
        center = torch.stack([coor_x, coor_y])
        center_int = center.to(torch.int32)
        cls_id = gt_labels[k]
        draw_heatmap_gaussian(heatmap[cls_id], center_int, radius)  # gt: sync low cls-index
        x, y = center_int[0], center_int[1]
        ind[k] = y * grid_w + x
        mask[k] = 1
        anno_box[k] = torch.cat([center - center_int, gt_boxes[k, 2:3], gt_boxes[k, 3:5].log(),
                                 gt_boxes[k, 5:6]])
    return heatmap, anno_box, ind, mask
