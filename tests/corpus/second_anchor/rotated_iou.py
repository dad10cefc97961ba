"""Rotated BEV IoU of every anchor against every GT box, in plain PyTorch: intersection polygon from the
corners inside the other box plus the edge crossings, vertices sorted by angle, shoelace area."""
import torch

try:
    from rotated_iou_ext import sort_vertices_forward  # compiled from cuda_op/sort_vert_kernel.cu  # gt: migration medium
except ImportError:
    sort_vertices_forward = None


def bev_corners(boxes):
    """boxes (..., 5) x y w l yaw -> corners (..., 4, 2) counter-clockwise."""
    x, y, w, l, yaw = boxes.unbind(-1)
    dx = torch.stack([l, -l, -l, l], -1) / 2
    dy = torch.stack([w, w, -w, -w], -1) / 2
    cos, sin = yaw.cos()[..., None], yaw.sin()[..., None]
    return torch.stack([dx * cos - dy * sin + x[..., None], dx * sin + dy * cos + y[..., None]], -1)


def edge_crossings(c1, c2):
    """c1 (N, M, 4, 2), c2 (N, M, 4, 2) -> the 16 edge-edge intersection points and their validity."""
    p, r = c1, c1.roll(-1, dims=-2) - c1
    q, s = c2, c2.roll(-1, dims=-2) - c2
    p, r = p[..., :, None, :], r[..., :, None, :]
    q, s = q[..., None, :, :], s[..., None, :, :]
    den = torch.linalg.det(torch.stack(torch.broadcast_tensors(r, s), -1))  # gt: cpu_fallback medium
    qp = q - p
    t = (qp[..., 0] * s[..., 1] - qp[..., 1] * s[..., 0]) / (den + 1e-8)
    u = (qp[..., 0] * r[..., 1] - qp[..., 1] * r[..., 0]) / (den + 1e-8)
    valid = (t > 0) & (t < 1) & (u > 0) & (u < 1) & (den.abs() > 1e-8)
    points = p + t[..., None] * r
    return points.flatten(-3, -2), valid.flatten(-2)


def corners_inside(corners, box_corners):
    """Which of `corners` (N, M, 4, 2) lie inside the rectangle given by `box_corners` (N, M, 4, 2)."""
    a, b, d = box_corners[..., 0:1, :], box_corners[..., 1:2, :], box_corners[..., 3:4, :]
    ab, ad, am = b - a, d - a, corners - a
    p_ab, p_ad = (ab * am).sum(-1), (ad * am).sum(-1)
    return (p_ab > -1e-6) & (p_ab < (ab * ab).sum(-1) + 1e-6) & (p_ad > -1e-6) & (p_ad < (ad * ad).sum(-1) + 1e-6)


def sort_by_angle(vertices, mask):
    """Indices that sort the valid vertices counter-clockwise around their mean; invalid ones last."""
    if sort_vertices_forward is not None and vertices.is_cuda:  # gt: migration medium sortv
        return sort_vertices_forward(vertices, mask, mask.sum(-1).int())
    num_valid = mask.sum(-1, keepdim=True).clamp(min=1)
    center = (vertices * mask[..., None]).sum(-2, keepdim=True) / num_valid[..., None]
    rel = vertices - center
    angle = torch.atan2(rel[..., 1], rel[..., 0])  # trap: cpu_fallback atan2 has an NPU kernel
    angle = torch.where(mask, angle, torch.full_like(angle, 1e4))  # trap: sync torch.where with three arguments reads nothing
    return angle.argsort(-1)


def rotated_iou_bev(boxes_a, boxes_b):
    """boxes_a (N, 5), boxes_b (M, 5) -> IoU (N, M)."""
    n, m = boxes_a.shape[0], boxes_b.shape[0]
    ca = bev_corners(boxes_a)[:, None].expand(n, m, 4, 2)
    cb = bev_corners(boxes_b)[None].expand(n, m, 4, 2)
    cross, cross_ok = edge_crossings(ca, cb)
    vertices = torch.cat([ca, cb, cross], -2)                                           # (N, M, 24, 2)
    mask = torch.cat([corners_inside(ca, cb), corners_inside(cb, ca), cross_ok], -1)
    order = sort_by_angle(vertices, mask)
    ordered = vertices.gather(-2, order[..., None].expand(-1, -1, -1, 2))
    ordered_mask = mask.gather(-1, order)
    # close the polygon by repeating the first vertex over the invalid tail
    first = ordered[..., :1, :].expand_as(ordered)
    ordered = torch.where(ordered_mask[..., None], ordered, first)
    nxt = ordered.roll(-1, dims=-2)
    area = 0.5 * (ordered[..., 0] * nxt[..., 1] - ordered[..., 1] * nxt[..., 0]).sum(-1).abs()
    area_a = (boxes_a[:, 2] * boxes_a[:, 3])[:, None]
    area_b = (boxes_b[:, 2] * boxes_b[:, 3])[None]
    return area / (area_a + area_b - area).clamp(min=1e-6)
