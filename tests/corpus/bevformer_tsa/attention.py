"""Spatial cross-attention for BEV queries (BEVFormer-style) with the deformable-attention kernel of
mmcv when it is available."""
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
except ImportError:
    MultiScaleDeformableAttnFunction = None


def multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)  # gt: sync medium shapes
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (H_, W_) in enumerate(value_spatial_shapes):  # gt: fused_op high msda
        value_l_ = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, H_, W_)  # gt: sync medium shapes
        sampling_grid_l_ = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_l_ = F.grid_sample(value_l_, sampling_grid_l_, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
        sampling_value_list.append(sampling_value_l_)
    attention_weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries,
                                                                  num_levels * num_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1)
    return output.view(bs, num_heads * embed_dims, num_queries).transpose(1, 2).contiguous()


class SpatialCrossAttention(nn.Module):
    def __init__(self, dims=32, heads=4, levels=2, points=4, im2col_step=64):
        super().__init__()
        self.heads, self.levels, self.points, self.im2col_step = heads, levels, points, im2col_step
        self.sampling_offsets = nn.Linear(dims, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dims, heads * levels * points)
        self.value_proj = nn.Linear(dims, dims)
        self.output_proj = nn.Linear(dims, dims)

    def forward(self, query, value, reference_points, spatial_shapes, level_start_index, bev_mask):
        bs, nq, _ = query.shape
        value = self.value_proj(value)
        value = value.masked_fill(~bev_mask[..., None], 0.0)  # trap: sync masked_fill is a write
        value = value.view(bs, value.shape[1], self.heads, -1)
        offsets = self.sampling_offsets(query).view(bs, nq, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(bs, nq, self.heads, self.levels * self.points).softmax(-1)
        weights = weights.view(bs, nq, self.heads, self.levels, self.points)
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        locations = reference_points[:, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if torch.cuda.is_available() and value.is_cuda:  # gt: migration high dispatch; fused_op high msda
            output = MultiScaleDeformableAttnFunction.apply(value, spatial_shapes, level_start_index, locations,
                                                            weights, self.im2col_step)
        else:
            output = multi_scale_deformable_attn_pytorch(value, spatial_shapes, locations, weights)  # gt: fused_op high msda
        return self.output_proj(output)
