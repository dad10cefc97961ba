"""Modulated deformable convolution (DCNv2). Uses mmcv's CUDA op when it is installed, otherwise a
pure-PyTorch version that samples every kernel tap with grid_sample."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from mmcv.ops import modulated_deform_conv2d
except ImportError:
    modulated_deform_conv2d = None


def deform_conv_pytorch(x, offset, mask, weight, bias, padding):
    b, c, h, w = x.shape
    cout, _, kh, kw = weight.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype),
                            torch.arange(w, device=x.device, dtype=x.dtype), indexing="ij")
    cols = []
    for k in range(kh * kw):  # gt: fused_op high dcn; small_op_loop medium dcn
        dy, dx = k // kw - padding, k % kw - padding
        py = ys + dy + offset[:, 2 * k]
        px = xs + dx + offset[:, 2 * k + 1]
        grid = torch.stack([px / (w - 1) * 2 - 1, py / (h - 1) * 2 - 1], -1)
        sampled = F.grid_sample(x, grid, align_corners=True, padding_mode="zeros")
        cols.append(sampled * mask[:, k:k + 1])
    cols = torch.stack(cols, 2).view(b, c * kh * kw, h * w)
    out = weight.view(cout, -1) @ cols
    return out.view(b, cout, h, w) + bias.view(1, -1, 1, 1)


class ModulatedDeformConv(nn.Module):
    def __init__(self, cin, cout, k=3):
        super().__init__()
        self.k, self.padding = k, k // 2
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.offset_conv = nn.Conv2d(cin, 3 * k * k, 3, padding=1)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x):
        o1, o2, m = self.offset_conv(x).chunk(3, dim=1)
        offset = torch.cat([o1, o2], 1)
        mask = m.sigmoid()
        if modulated_deform_conv2d is not None and x.is_cuda:  # gt: migration high dcn-dispatch; fused_op high dcn
            return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, 1, self.padding, 1, 1, 1)
        return deform_conv_pytorch(x, offset, mask, self.weight, self.bias, self.padding)
