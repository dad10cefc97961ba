"""Transformer building blocks written out by hand (as many motion-prediction repositories do)."""
import math

import torch
import torch.nn as nn

try:
    from torch_scatter import scatter_max
except ImportError:  # pure-PyTorch fallback so the repository runs without the extension
    def scatter_max(src, index, dim=0, dim_size=None):
        dim_size = int(index.max()) + 1 if dim_size is None else dim_size
        out = src.new_zeros((dim_size,) + src.shape[1:])
        for i in range(dim_size):  # gt: fused_op high smax; small_op_loop high smax
            sel = index == i
            if sel.any():  # gt: sync high smax-sync
                out[i] = src[sel].max(0).values  # gt: sync high smax-sync
        return out, None


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight  # gt: fused_op medium


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin  # gt: fused_op medium


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim // heads, 2).float() / (dim // heads)))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, positions):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        freqs = positions[..., None] * self.inv_freq                             # (b, n, d/2)
        emb = torch.cat([freqs, freqs], -1)[:, None]
        q, k = apply_rotary(q, k, emb.cos(), emb.sin())
        attn = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)  # gt: fused_op medium attn
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)  # gt: fused_op medium attn
        return self.proj(out)
