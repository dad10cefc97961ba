"""Pure-PyTorch PointNet++ primitives (the usual fallback when the CUDA ops are not built): furthest point
sampling, ball query, grouping and three-nearest-neighbour interpolation."""
import torch


@torch.no_grad()
def furthest_point_sample(xyz, npoint):
    """xyz (B, N, 3) -> indices (B, npoint) of iteratively farthest points."""
    bs, n, _ = xyz.shape
    idx = torch.zeros(bs, npoint, dtype=torch.long, device=xyz.device)
    min_dist = torch.full((bs, n), 1e10, device=xyz.device)
    farthest = torch.zeros(bs, dtype=torch.long, device=xyz.device)
    batch = torch.arange(bs, device=xyz.device)
    for i in range(npoint):  # gt: fused_op high fps; small_op_loop medium fps
        idx[:, i] = farthest
        centroid = xyz[batch, farthest].unsqueeze(1)
        min_dist = torch.minimum(min_dist, ((xyz - centroid) ** 2).sum(-1))
        farthest = min_dist.argmax(-1)
    return idx


@torch.no_grad()
def ball_query(radius, nsample, xyz, new_xyz):
    """First `nsample` points within `radius` of each center (padded with the first hit) -> (B, M, nsample)."""
    bs, n, _ = xyz.shape
    sqr = torch.cdist(new_xyz, xyz) ** 2
    idx = torch.arange(n, device=xyz.device).view(1, 1, n).repeat(bs, new_xyz.shape[1], 1)
    idx[sqr > radius ** 2] = n  # trap: sync masked write, no read
    idx = idx.sort(-1).values[..., :nsample]
    first = idx[..., :1].expand_as(idx)
    return torch.where(idx == n, first, idx)


def gather_points(feats, idx):
    """feats (B, N, C), idx (B, ...) -> (B, ..., C)."""
    bs = feats.shape[0]
    batch = torch.arange(bs, device=feats.device).view(bs, *([1] * (idx.dim() - 1)))
    return feats[batch, idx]


def three_interpolate(unknown, known, known_feats):
    """Inverse-distance weighted features of the 3 nearest known points for every unknown point."""
    dist, idx = torch.cdist(unknown, known).topk(3, dim=-1, largest=False)
    weight = 1.0 / (dist + 1e-8)
    weight = weight / weight.sum(-1, keepdim=True)
    return (gather_points(known_feats, idx) * weight[..., None]).sum(2)  # gt: fused_op low
