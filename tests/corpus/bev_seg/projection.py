"""Image-to-BEV feature lifting by sampling each camera at the projections of fixed BEV pillars."""
import torch
import torch.nn.functional as F

try:
    import bev_sampler_cuda  # optional fused sampler built with the repository's setup.py  # gt: migration medium
    HAS_CUDA_SAMPLER = True
except ImportError:
    HAS_CUDA_SAMPLER = False


def bev_grid(h, w, z_levels, x_range, y_range, z_range, device):
    xs = torch.linspace(*x_range, w, device=device)
    ys = torch.linspace(*y_range, h, device=device)
    zs = torch.linspace(*z_range, z_levels, device=device)
    z, y, x = torch.meshgrid(zs, ys, xs, indexing="ij")
    return torch.stack([x, y, z, torch.ones_like(x)], -1)                     # (Z, H, W, 4)


def sample_cameras_pytorch(img_feats, grid_points, lidar2img, img_hw):
    """img_feats (B, N, C, h, w); returns (B, C, H, W): mean over the cameras that see each pillar."""
    b, n, c = img_feats.shape[:3]
    z, h, w = grid_points.shape[:3]
    acc = img_feats.new_zeros(b, c, z, h * w)
    hits = img_feats.new_zeros(b, 1, z, h * w)
    pts = grid_points.view(1, -1, 4, 1)
    for cam_id in range(n):  # gt: small_op_loop medium cams; fused_op medium cams
        cam = (lidar2img[:, cam_id].unsqueeze(1) @ pts).squeeze(-1)
        depth = cam[..., 2:3]
        uv = cam[..., :2] / depth.clamp(min=1e-4)
        uv = uv / uv.new_tensor([img_hw[1], img_hw[0]]) * 2 - 1
        visible = ((depth > 0.1) & (uv.abs() <= 1).all(-1, keepdim=True)).float()
        sampled = F.grid_sample(img_feats[:, cam_id], uv.view(b, z, h * w, 2), align_corners=False)
        acc = acc + sampled * visible.view(b, 1, z, h * w)
        hits = hits + visible.view(b, 1, z, h * w)
    return (acc / hits.clamp(min=1)).mean(2).view(b, c, h, w)


def lift_to_bev(img_feats, grid_points, lidar2img, img_hw):
    if HAS_CUDA_SAMPLER and torch.cuda.is_available():  # gt: migration high dispatch
        return bev_sampler_cuda.forward(img_feats, grid_points, lidar2img, img_hw)
    return sample_cameras_pytorch(img_feats, grid_points, lidar2img, img_hw)
