"""CenterFormer-style decoder: queries from heatmap peaks attend to two BEV scales with deformable attention
around their own cell, then predict class and box."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def deform_attend(value, shapes, ref, offsets, weights):
    """value (B, sum HW, heads, d); ref (B, K, 2) in [0, 1]; offsets (B, K, heads, L, P, 2) in cells;
    weights (B, K, heads, L, P) -> (B, K, heads * d)."""
    bs, _, num_heads, dim = value.shape
    per_scale = value.split([h * w for h, w in shapes], dim=1)
    heads_out = []
    for head in range(num_heads):  # gt: fused_op high msda; small_op_loop medium msda
        acc = 0
        for lvl, (h, w) in enumerate(shapes):  # gt: fused_op high msda; small_op_loop medium msda
            v = per_scale[lvl][:, :, head].transpose(1, 2).reshape(bs, dim, h, w)
            loc = ref[:, :, None] + offsets[:, :, head, lvl] / value.new_tensor([w, h])  # gt: sync low
            sampled = F.grid_sample(v, 2 * loc - 1, mode="bilinear", align_corners=False)       # (B, d, K, P)
            acc = acc + (sampled * weights[:, None, :, head, lvl]).sum(-1)
        heads_out.append(acc)
    return torch.cat(heads_out, 1).transpose(1, 2)


class QueryDecoder(nn.Module):
    def __init__(self, embed, num_classes, heads=4, levels=2, points=4):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.class_embed = nn.Embedding(num_classes, embed)
        self.pos = nn.Linear(2, embed)
        self.self_attn = nn.MultiheadAttention(embed, heads, batch_first=True)
        self.value_proj = nn.Linear(embed, embed)
        self.offsets = nn.Linear(embed, heads * levels * points * 2)
        self.attn_w = nn.Linear(embed, heads * levels * points)
        self.out_proj = nn.Linear(embed, embed)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(embed), nn.LayerNorm(embed), nn.LayerNorm(embed)
        self.ffn = nn.Sequential(nn.Linear(embed, 2 * embed), nn.ReLU(), nn.Linear(2 * embed, embed))
        self.cls = nn.Linear(embed, num_classes)
        self.box = nn.Linear(embed, 2 + 1 + 3 + 2)         # centre offset, z, log dims, sin / cos
        self.iou = nn.Linear(embed, 1)

    def forward(self, query, query_class, ref, bev_levels):
        bs, k = query.shape[:2]
        query = query + self.class_embed(query_class)
        q = query + self.pos(ref)
        query = self.norm1(query + self.self_attn(q, q, query)[0])
        shapes = [tuple(f.shape[-2:]) for f in bev_levels]  # trap: sync shapes are host metadata
        value = self.value_proj(torch.cat([f.flatten(2).transpose(1, 2) for f in bev_levels], 1))
        value = value.view(bs, value.shape[1], self.heads, -1)
        offsets = self.offsets(query).view(bs, k, self.heads, self.levels, self.points, 2)
        weights = self.attn_w(query).view(bs, k, self.heads, self.levels * self.points).softmax(-1)
        weights = weights.view(bs, k, self.heads, self.levels, self.points)
        query = self.norm2(query + self.out_proj(deform_attend(value, shapes, ref, offsets, weights)))
        query = self.norm3(query + self.ffn(query))
        return self.cls(query), self.box(query), self.iou(query).squeeze(-1)
