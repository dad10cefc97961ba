"""Aligned BEV IoU between predicted and target boxes for the IoU-aware score branch."""
import torch

try:
    from det3d.ops.iou3d_nms import iou3d_nms_cuda  # gt: migration medium
except ImportError:
    iou3d_nms_cuda = None


def aligned_bev_iou(boxes_a, boxes_b):
    """boxes (N, 7+): x y z l w h yaw. The CUDA kernel computes the rotated overlap; without it the boxes
    are treated as axis-aligned, which is what the training then sees."""
    if iou3d_nms_cuda is not None and boxes_a.is_cuda:  # gt: migration medium iou; fused_op medium iou
        overlap = boxes_a.new_zeros(boxes_a.shape[0])
        iou3d_nms_cuda.boxes_aligned_overlap_bev_gpu(boxes_a.contiguous(), boxes_b.contiguous(), overlap)
    else:
        half_a, half_b = boxes_a[:, 3:5] / 2, boxes_b[:, 3:5] / 2
        lo = torch.maximum(boxes_a[:, :2] - half_a, boxes_b[:, :2] - half_b)
        hi = torch.minimum(boxes_a[:, :2] + half_a, boxes_b[:, :2] + half_b)
        overlap = (hi - lo).clamp(min=0).prod(-1)
    area_a = boxes_a[:, 3] * boxes_a[:, 4]
    area_b = boxes_b[:, 3] * boxes_b[:, 4]
    return overlap / (area_a + area_b - overlap).clamp(min=1e-6)
