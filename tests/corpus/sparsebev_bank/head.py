"""SparseBEV-style decoder: adaptive self-attention over fresh + carried queries, sampling points spread
around each anchor, warped back through the past frames, sampled from all cameras and levels."""
import torch
import torch.nn as nn

from sampling import temporal_sampling

GROUPS, POINTS = 4, 4


def anchor_sampling_points(anchor, offsets):
    """anchor (B, Q, 10); offsets (B, Q, G*P, 3) in units of the box size -> points (B, Q, G*P, 3)."""
    size = anchor[..., 3:6].exp()
    sin, cos = anchor[..., 6:7], anchor[..., 7:8]
    local = offsets * size[:, :, None]
    rot_x = local[..., 0] * cos - local[..., 1] * sin
    rot_y = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([rot_x, rot_y, local[..., 2]], -1) + anchor[:, :, None, :3]


def warp_to_frames(points, velocity, time_deltas, lidar2img):
    """points (B, Q, N, 3) at the current time; velocity (B, Q, 2); time_deltas (B, T); lidar2img (B, T, cams, 4, 4)
    -> pixel coords (B, T, cams, Q, N, 2) and a validity mask."""
    num_frames = time_deltas.shape[1]
    uvs, valids = [], []
    for t in range(num_frames):  # gt: small_op_loop medium
        shift = velocity * time_deltas[:, t, None, None]
        pts = points - torch.cat([shift, torch.zeros_like(shift[..., :1])], -1)[:, :, None]
        homo = torch.cat([pts, torch.ones_like(pts[..., :1])], -1)
        cam = torch.einsum("bcij,bqnj->bcqni", lidar2img[:, t], homo)
        depth = cam[..., 2:3]
        uvs.append(cam[..., :2] / depth.clamp(min=1e-5))
        valids.append(depth[..., 0] > 0.1)
    return torch.stack(uvs, 1), torch.stack(valids, 1)


class DecoderLayer(nn.Module):
    def __init__(self, embed, levels, cams):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed, 4, batch_first=True)
        self.offsets = nn.Linear(embed, GROUPS * POINTS * 3)
        self.mix = nn.Linear(embed, GROUPS * POINTS * levels * cams)
        self.out = nn.Linear(embed, embed)
        self.norm1, self.norm2 = nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.ffn = nn.Sequential(nn.Linear(embed, 2 * embed), nn.ReLU(), nn.Linear(2 * embed, embed))
        self.reg = nn.Linear(embed, 10)
        self.cls = nn.Linear(embed, 3)
        self.levels, self.cams = levels, cams

    def forward(self, query, anchor, pos, mlvl_value, level_hw, time_deltas, lidar2img, image_wh):
        q = query + pos
        query = self.norm1(query + self.self_attn(q, q, query)[0])
        bs, nq = query.shape[:2]
        frames, cams = lidar2img.shape[1], lidar2img.shape[2]
        pts = anchor_sampling_points(anchor, self.offsets(query).view(bs, nq, GROUPS * POINTS, 3).tanh())
        uv, valid = warp_to_frames(pts, anchor[..., 8:10], time_deltas, lidar2img)   # (B, T, cams, Q, G*P, 2)
        uv = (uv / image_wh).clamp(-0.1, 1.1)
        mix = self.mix(query).view(bs, nq, GROUPS, POINTS, cams, self.levels).softmax(-1)
        mix = mix.permute(0, 4, 1, 2, 3, 5)[:, None] * valid.view(bs, frames, cams, nq, GROUPS, POINTS, 1)
        uv = uv.view(bs, frames, cams, nq, GROUPS, POINTS, 1, 2).expand(-1, -1, -1, -1, -1, -1, self.levels, -1)
        sampled = temporal_sampling(mlvl_value, level_hw, uv.flatten(0, 2), mix.flatten(0, 2), frames * cams)
        query = query + self.out(sampled.view(bs, nq, -1))
        query = self.norm2(query + self.ffn(query))
        delta = self.reg(query)
        anchor = torch.cat([anchor[..., :3] + delta[..., :3], anchor[..., 3:] + delta[..., 3:]], -1)
        return query, anchor.detach(), self.cls(query), anchor


class SparseBEVHead(nn.Module):
    def __init__(self, embed, levels, cams, num_layers=2):
        super().__init__()
        self.pos = nn.Sequential(nn.Linear(10, embed), nn.ReLU(), nn.Linear(embed, embed))
        self.layers = nn.ModuleList([DecoderLayer(embed, levels, cams) for _ in range(num_layers)])

    def forward(self, query, anchor, mlvl_value, level_hw, time_deltas, lidar2img, image_wh):
        outputs = []
        for layer in self.layers:  # trap: small_op_loop decoder layers refine the previous layer's anchors
            query, next_anchor, cls, box = layer(query, anchor, self.pos(anchor), mlvl_value, level_hw,
                                                 time_deltas, lidar2img, image_wh)
            outputs.append((cls, box))
            anchor = next_anchor
        return query, anchor, outputs
