"""Host-side voxelization (numpy), as a data-pipeline transform."""
import numpy as np


def voxelize(points, voxel_size, pc_range, max_points, max_voxels):
    grid = np.round((pc_range[3:] - pc_range[:3]) / voxel_size).astype(np.int64)
    coords = np.floor((points[:, :3] - pc_range[:3]) / voxel_size).astype(np.int64)
    inside = np.all((coords >= 0) & (coords < grid), axis=1)
    points, coords = points[inside], coords[inside]
    keys = (coords[:, 2] * grid[1] + coords[:, 1]) * grid[0] + coords[:, 0]
    uniq, inverse = np.unique(keys, return_inverse=True)
    uniq, inverse = uniq[:max_voxels], inverse
    voxels = np.zeros((len(uniq), max_points, points.shape[1]), np.float32)
    num = np.zeros(len(uniq), np.int64)
    for p, v in enumerate(inverse):
        if v < len(uniq) and num[v] < max_points:
            voxels[v, num[v]] = points[p]
            num[v] += 1
    vox_coords = np.stack([uniq // (grid[0] * grid[1]), (uniq // grid[0]) % grid[1], uniq % grid[0]], 1)
    return voxels, vox_coords, num
