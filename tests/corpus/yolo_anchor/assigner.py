"""Anchor-to-ground-truth assignment: IoU thresholds per ground truth, then per-anchor best match."""
import torch


def box_iou(a, b):
    """a (N, 4), b (M, 4) in x1y1x2y2 -> (N, M)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-6)


class MaxIoUAssigner:
    def __init__(self, pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.3):
        self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou = pos_iou_thr, neg_iou_thr, min_pos_iou

    def assign(self, anchors, gt_boxes, gt_labels):
        num_gt = gt_boxes.shape[0]
        assigned = anchors.new_full((anchors.shape[0],), -1, dtype=torch.long)
        overlaps = box_iou(gt_boxes, anchors)                                    # (G, A)
        max_overlaps, argmax = overlaps.max(0)
        assigned[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0  # trap: sync masked write
        labels = torch.zeros_like(assigned)
        pos = max_overlaps >= self.pos_iou_thr
        assigned[pos] = argmax[pos] + 1  # gt: sync medium
        # low-quality matches: every ground truth keeps the anchors it overlaps most
        gt_max, gt_argmax = overlaps.max(1)
        for i in range(num_gt):  # gt: small_op_loop medium lowq
            if gt_max[i] >= self.min_pos_iou:  # gt: sync high lowq-if
                best = overlaps[i, :] == gt_max[i]
                assigned[best] = i + 1
        pos_inds = torch.nonzero(assigned > 0, as_tuple=False).squeeze(1)  # gt: sync medium
        labels[pos_inds] = gt_labels[assigned[pos_inds] - 1]
        return assigned, labels, pos_inds
