"""BEVFormer-style encoder layer: BEV queries attend to a two-level camera feature pyramid with
deformable spatial cross-attention; a segmentation head on the BEV grid."""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import SpatialCrossAttention

BEV_H = BEV_W = 12
DIMS = 32


class Pyramid(nn.Module):
    def __init__(self):
        super().__init__()
        self.s1 = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, DIMS, 3, 2, 1), nn.ReLU())
        self.s2 = nn.Sequential(nn.Conv2d(DIMS, DIMS, 3, 2, 1), nn.ReLU())

    def forward(self, x):
        f1 = self.s1(x)
        return [f1, self.s2(f1)]


class BEVFormerLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.bev_embedding = nn.Embedding(BEV_H * BEV_W, DIMS)
        self.level_embeds = nn.Parameter(torch.randn(2, DIMS) * 0.02)
        self.cross_attn = SpatialCrossAttention(DIMS)
        self.norm = nn.LayerNorm(DIMS)
        self.ffn = nn.Sequential(nn.Linear(DIMS, 64), nn.ReLU(), nn.Linear(64, DIMS))
        self.seg = nn.Linear(DIMS, 2)
        ys, xs = torch.meshgrid(torch.linspace(0.05, 0.95, BEV_H), torch.linspace(0.05, 0.95, BEV_W), indexing="ij")
        self.register_buffer("ref_2d", torch.stack([xs, ys], -1).view(1, -1, 2))

    def forward(self, feats):
        bs = feats[0].shape[0]
        spatial_shapes = torch.as_tensor([f.shape[-2:] for f in feats], dtype=torch.long, device=feats[0].device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        value = torch.cat([f.flatten(2).transpose(1, 2) + self.level_embeds[i] for i, f in enumerate(feats)], 1)
        bev_mask = value.abs().sum(-1) > 0
        query = self.bev_embedding.weight[None].expand(bs, -1, -1)
        query = self.norm(query + self.cross_attn(query, value, self.ref_2d.expand(bs, -1, -1), spatial_shapes,
                                                  level_start_index, bev_mask))
        query = query + self.ffn(query)
        return self.seg(query).view(bs, BEV_H, BEV_W, 2).permute(0, 3, 1, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(20)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pyramid, layer = Pyramid().to(device), BEVFormerLayer().to(device)
    optimizer = torch.optim.AdamW([*pyramid.parameters(), *layer.parameters()], lr=2e-4, weight_decay=0.01)  # gt: optimizer medium
    g = torch.Generator().manual_seed(20)
    for it in range(args.iters):
        img = torch.randn(args.batch_size, 3, 48, 48, generator=g).to(device)
        target = torch.randint(0, 2, (args.batch_size, BEV_H, BEV_W), generator=g).to(device)
        logits = layer(pyramid(img))
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # trap: sync AdamW step counters are host tensors
        print(f"iter {it} loss {loss.item():.6f}")  # gt: sync medium


if __name__ == "__main__":
    main()
