"""Box utilities for the region proposal network."""
import torch


def pairwise_iou(boxes1, boxes2):
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None] - inter)


def greedy_nms(boxes, scores, iou_threshold, max_keep):
    """Classic greedy NMS: keep the best box, drop everything overlapping it, repeat."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0 and len(keep) < max_keep:  # gt: small_op_loop high nms; fused_op medium nms
        i = order[0]
        keep.append(i)
        if order.numel() == 1:
            break
        ious = pairwise_iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]  # gt: sync high nms-mask
    return torch.stack(keep)


def decode(anchors, deltas, max_ratio=4.0):
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    xa, ya = anchors[:, 0] + 0.5 * wa, anchors[:, 1] + 0.5 * ha
    dx, dy, dw, dh = deltas.unbind(-1)
    dw, dh = dw.clamp(-max_ratio, max_ratio), dh.clamp(-max_ratio, max_ratio)
    x, y, w, h = xa + dx * wa, ya + dy * ha, wa * dw.exp(), ha * dh.exp()
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], -1)
