"""Hand-written dynamic voxelization (mean of the points in each pillar) and the BEV scatter of the
pillar features, as in research forks that avoid building mmcv's ops."""
import torch


def dynamic_voxelize(points, num_valid, pc_min, voxel_size, grid):
    """points (B, N, C) padded per sample, num_valid (B,) -> voxel means (V, C), coords (V, 4) as b, z, y, x."""
    voxel_feats, voxel_coords = [], []
    for b in range(points.shape[0]):  # gt: small_op_loop medium vox; fused_op medium vox
        pts = points[b, : num_valid[b]]  # gt: sync medium
        coords = ((pts[:, :3] - pc_min) / voxel_size).floor().long()
        in_range = ((coords >= 0) & (coords < grid)).all(1)
        pts, coords = pts[in_range], coords[in_range]  # gt: sync medium
        uniq, inverse = torch.unique(coords, dim=0, return_inverse=True)  # gt: sync medium
        num_voxels = uniq.shape[0]  # trap: sync the size of an existing tensor needs no read
        sums = pts.new_zeros(num_voxels, pts.shape[1]).index_add_(0, inverse, pts)
        counts = pts.new_zeros(num_voxels).index_add_(0, inverse, torch.ones_like(pts[:, 0]))
        voxel_feats.append(sums / counts[:, None])
        voxel_coords.append(torch.cat([uniq.new_full((num_voxels, 1), b), uniq.flip(1)], 1))
    return torch.cat(voxel_feats), torch.cat(voxel_coords)


def scatter_to_bev(feats, coords, batch_size, grid_xy):
    """PointPillarsScatter: one pillar per (b, y, x) cell (a single z slice) -> (B, C, Y, X)."""
    nx, ny = grid_xy
    canvas = feats.new_zeros(feats.shape[1], batch_size * ny * nx)
    flat = (coords[:, 0] * ny + coords[:, 2]) * nx + coords[:, 3]
    canvas[:, flat] = feats.t()  # trap: sync indexed write with integer indices, no read
    return canvas.view(-1, batch_size, ny, nx).transpose(0, 1)
