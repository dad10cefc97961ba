"""Second-stage RoI helpers: points inside rotated boxes, per-RoI point statistics."""
import torch


def rotate_points_z(points, angle):
    c, s = torch.cos(angle), torch.sin(angle)
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x * c + y * s, -x * s + y * c, points[..., 2]], -1)


def points_in_rois(points, rois):
    """points (N, 3); rois (R, 7) = x, y, z, dx, dy, dz, yaw -> bool (R, N)."""
    masks = []
    for roi in rois:  # gt: small_op_loop high pib; fused_op medium pib
        local = rotate_points_z(points - roi[:3], roi[6])
        inside = (local.abs() <= roi[3:6] / 2).all(-1)
        masks.append(inside)
    return torch.stack(masks)


def roi_principal_axes(points, mask):
    """Orientation cue per RoI: principal axes of the xy covariance of its points."""
    w = mask.float()
    count = w.sum(1, keepdim=True).clamp(min=1)
    mean = (w @ points[:, :2]) / count
    centered = points[None, :, :2] - mean[:, None]
    cov = torch.einsum("rn,rni,rnj->rij", w, centered, centered) / count[..., None]
    cov = cov + 1e-3 * torch.eye(2, device=cov.device)
    evals, evecs = torch.linalg.eigh(cov)  # gt: cpu_fallback high; sync low
    return evecs[..., -1], evals
