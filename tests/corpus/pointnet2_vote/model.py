"""VoteNet: a PointNet++ backbone votes for object centers; votes are clustered around sampled seeds and
each cluster proposes an objectness score, a center offset, a heading bin and a size class."""
import torch
import torch.nn as nn

from pointnet2_ops import ball_query, furthest_point_sample, gather_points, three_interpolate


class SetAbstraction(nn.Module):
    def __init__(self, npoint, radius, nsample, in_ch, mlp):
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        layers, c = [], in_ch + 3
        for out in mlp:  # trap: small_op_loop builds the MLP once at construction
            layers += [nn.Conv2d(c, out, 1), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        self.mlp = nn.Sequential(*layers)

    def forward(self, xyz, feats):
        centers_idx = furthest_point_sample(xyz, self.npoint)
        new_xyz = gather_points(xyz, centers_idx)
        group_idx = ball_query(self.radius, self.nsample, xyz, new_xyz)
        grouped_xyz = (gather_points(xyz, group_idx) - new_xyz.unsqueeze(2)) / self.radius
        grouped = grouped_xyz if feats is None else torch.cat([grouped_xyz, gather_points(feats, group_idx)], -1)  # gt: fused_op low
        out = self.mlp(grouped.permute(0, 3, 1, 2)).amax(-1)                  # (B, C, npoint)
        return new_xyz, out.transpose(1, 2), centers_idx


class FeaturePropagation(nn.Module):
    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_ch, out_ch), nn.LayerNorm(out_ch), nn.ReLU())

    def forward(self, xyz, known_xyz, feats, known_feats):
        return self.mlp(torch.cat([three_interpolate(xyz, known_xyz, known_feats), feats], -1))


class VoteNet(nn.Module):
    def __init__(self, num_classes, num_heading_bins, num_proposals=32):
        super().__init__()
        self.num_classes, self.num_heading_bins = num_classes, num_heading_bins
        self.sa1 = SetAbstraction(256, 0.4, 16, 1, (32, 32, 64))
        self.sa2 = SetAbstraction(128, 0.8, 16, 64, (64, 64, 128))
        self.fp = FeaturePropagation(128 + 64, 96)
        self.vote = nn.Sequential(nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 3 + 96))
        self.proposal_sa = SetAbstraction(num_proposals, 0.6, 16, 96, (96, 96))
        self.proposal = nn.Sequential(nn.Linear(96, 96), nn.ReLU(),
                                      nn.Linear(96, 2 + 3 + 2 * num_heading_bins + num_classes + num_classes))

    def forward(self, points):
        xyz, intensity = points[..., :3], points[..., 3:]
        xyz1, f1, seed_inds = self.sa1(xyz, intensity)
        xyz2, f2, _ = self.sa2(xyz1, f1)
        seeds = self.fp(xyz1, xyz2, f1, f2)                                    # (B, 256, 96)
        vote = self.vote(seeds)
        vote_xyz, vote_feats = xyz1 + vote[..., :3], seeds + vote[..., 3:]
        prop_xyz, prop_feats, prop_seed = self.proposal_sa(vote_xyz, vote_feats)
        out = self.proposal(prop_feats)
        nh, nc = self.num_heading_bins, self.num_classes
        return {"seed_xyz": xyz1, "seed_inds": seed_inds, "vote_xyz": vote_xyz, "proposal_xyz": prop_xyz, "proposal_seeds": prop_seed,
                "objectness": out[..., :2], "center": prop_xyz + out[..., 2:5],
                "heading_cls": out[..., 5:5 + nh], "heading_res": out[..., 5 + nh:5 + 2 * nh],
                "size_cls": out[..., 5 + 2 * nh:5 + 2 * nh + nc], "sem_cls": out[..., 5 + 2 * nh + nc:]}
