"""SECOND-style anchor targets: max-IoU assignment on the rotated BEV IoU, delta box encoding, direction
bins, and per-point foreground labels for the auxiliary segmentation head."""
import math

import torch

from rotated_iou import rotated_iou_bev


def limit_period(val, offset=0.5, period=math.pi):
    return val - torch.floor(val / period + offset) * period


def encode_boxes(gt, anchors):
    """mmdet3d DeltaXYZWLHRBBoxCoder.encode: (N, 7) x y z w l h yaw."""
    xa, ya, za, wa, la, ha, ra = torch.split(anchors, 1, dim=-1)
    xg, yg, zg, wg, lg, hg, rg = torch.split(gt, 1, dim=-1)
    diagonal = torch.sqrt(la ** 2 + wa ** 2)
    return torch.cat([(xg - xa) / diagonal, (yg - ya) / diagonal, (zg - za) / ha, torch.log(wg / wa),
                      torch.log(lg / la), torch.log(hg / ha), rg - ra], -1)


def assign_single(anchors, gt_boxes, pos_iou=0.6, neg_iou=0.45, min_pos_iou=0.45):
    """MaxIoUAssigner on one sample: labels 1 / 0 / -1 (ignore) and the matched GT per anchor."""
    num_gts = gt_boxes.shape[0]
    ious = rotated_iou_bev(anchors[:, [0, 1, 3, 4, 6]], gt_boxes[:, [0, 1, 3, 4, 6]])  # gt: fused_op high riou
    max_overlaps, argmax = ious.max(dim=1)
    assigned = torch.full_like(argmax, -1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou)] = 0  # trap: sync masked write, no read
    pos = max_overlaps >= pos_iou
    assigned[pos] = argmax[pos] + 1  # gt: sync medium
    gt_max_overlaps, _ = ious.max(dim=0)
    for i in range(num_gts):  # gt: small_op_loop medium lowq
        if gt_max_overlaps[i] >= min_pos_iou:  # gt: sync medium lowq
            assigned[ious[:, i] == gt_max_overlaps[i]] = i + 1
    return assigned


def anchor_targets(anchors, gt_boxes_list):
    labels, box_targets, dir_targets = [], [], []
    for gt_boxes in gt_boxes_list:  # gt: small_op_loop medium
        assigned = assign_single(anchors, gt_boxes)
        pos_inds = torch.nonzero(assigned > 0, as_tuple=False).squeeze(-1).unique()  # gt: sync medium
        label = (assigned > 0).long() - (assigned < 0).long()
        target = anchors.new_zeros(anchors.shape[0], 7)
        matched = gt_boxes[assigned[pos_inds] - 1]
        target[pos_inds] = encode_boxes(matched, anchors[pos_inds])  # trap: sync indexed write with integer indices
        direction = anchors.new_zeros(anchors.shape[0], dtype=torch.long)
        direction[pos_inds] = (limit_period(matched[:, 6], 0, 2 * math.pi) / math.pi).floor().long().clamp(0, 1)
        labels.append(label)
        box_targets.append(target)
        dir_targets.append(direction)
    return torch.stack(labels), torch.stack(box_targets), torch.stack(dir_targets)


def foreground_points(points, gt_boxes):
    """points (N, 3), gt_boxes (G, 7) -> bool (N,): inside any box (enlarged by 0.2 m), as PartA2 labels them."""
    fg = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for k in range(gt_boxes.shape[0]):  # gt: fused_op high pib; small_op_loop medium pib
        box = gt_boxes[k]
        shift = points[:, :2] - box[:2]
        cos, sin = torch.cos(-box[6]), torch.sin(-box[6])
        local_x = shift[:, 0] * cos - shift[:, 1] * sin
        local_y = shift[:, 0] * sin + shift[:, 1] * cos
        inside = (local_x.abs() <= box[4] / 2 + 0.2) & (local_y.abs() <= box[3] / 2 + 0.2)
        inside &= (points[:, 2] - box[2]).abs() <= box[5] / 2 + 0.2
        fg |= inside
    return fg
