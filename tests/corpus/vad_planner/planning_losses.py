"""VAD-style vectorized planning constraints: ego-agent collision, ego-boundary overstepping, ego-lane
direction, and a comfort term from a cubic fitted to the planned waypoints."""
import torch
import torch.nn.functional as F


def collision_loss(ego_traj, agent_trajs, agent_valid, safe_dist=3.0):
    """ego_traj (B, T, 2), agent_trajs (B, A, T, 2), agent_valid (B, A) -> mean violation of `safe_dist`."""
    total = ego_traj.new_zeros(())
    steps = ego_traj.shape[1]
    for t in range(steps):  # gt: small_op_loop medium
        dist = torch.linalg.norm(agent_trajs[:, :, t] - ego_traj[:, None, t], dim=-1)   # (B, A)
        violation = F.relu(safe_dist - dist) * agent_valid
        total = total + violation.sum() / agent_valid.sum().clamp(min=1.0)
    return total / steps


def point_to_segments(points, seg_start, seg_end):
    """Distance of points (B, 2) to every segment (B, S, 2) -> (B, S)."""
    d = seg_end - seg_start
    t = ((points[:, None] - seg_start) * d).sum(-1) / (d * d).sum(-1).clamp(min=1e-6)
    proj = seg_start + t.clamp(0, 1)[..., None] * d
    return torch.linalg.norm(points[:, None] - proj, dim=-1)


def boundary_loss(ego_traj, boundaries, margin=1.0):
    """boundaries (B, L, P, 2) polylines; penalize waypoints closer than `margin` to any boundary."""
    starts, ends = boundaries[:, :, :-1].flatten(1, 2), boundaries[:, :, 1:].flatten(1, 2)
    per_step = [F.relu(margin - point_to_segments(ego_traj[:, t], starts, ends).amin(-1)) for t in range(ego_traj.shape[1])]  # gt: small_op_loop medium
    return torch.stack(per_step, 1).mean()


def direction_loss(ego_traj, lane_dirs):
    """Angle between each planned displacement and the direction of the nearest lane (B, T, 2)."""
    step = torch.diff(ego_traj, dim=1, prepend=torch.zeros_like(ego_traj[:, :1]))
    heading = torch.atan2(step[..., 1], step[..., 0])  # trap: cpu_fallback atan2 has an NPU kernel
    lane_heading = torch.atan2(lane_dirs[..., 1], lane_dirs[..., 0])  # trap: cpu_fallback atan2 has an NPU kernel
    return (1 - torch.cos(heading - lane_heading)).mean()


def comfort_loss(ego_traj, dt):
    """Jerk of a least-squares cubic fitted to the waypoints (x(t), y(t))."""
    steps = ego_traj.shape[1]
    t = torch.arange(1, steps + 1, device=ego_traj.device, dtype=ego_traj.dtype) * dt
    vander = torch.stack([torch.ones_like(t), t, t ** 2, t ** 3], -1).repeat(ego_traj.shape[0], 1, 1)
    coef = torch.linalg.lstsq(vander, ego_traj).solution  # gt: cpu_fallback high; sync low
    return (6 * coef[:, 3]).pow(2).sum(-1).mean()
