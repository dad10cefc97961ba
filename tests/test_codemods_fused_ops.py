"""mx_driving call-site rewrites, checked against the catalog's signature and argument mapping
(mx_driving cannot run here)."""
from __future__ import annotations

import libcst as cst
import pytest

from _codemod_helpers import git_apply_check, line_of
from npu_advise.recommendations.catalog import load
from npu_advise.recommendations.codemods import fused_ops
from npu_advise.recommendations.codemods.diffs import to_fix

# BEVFormer projects/mmdet3d_plugin/bevformer/modules/decoder.py (seed chapter 2.2).
BEVFORMER = '''import torch
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
from .multi_scale_deformable_attn_function import MultiScaleDeformableAttnFunction_fp32


class CustomMSDeformableAttention(object):
    def forward(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        if torch.cuda.is_available() and value.is_cuda:

            # using fp16 deformable attention is unstable because it performs many sum operations
            if value.dtype == torch.float16:
                MultiScaleDeformableAttnFunction = MultiScaleDeformableAttnFunction_fp32
            else:
                MultiScaleDeformableAttnFunction = MultiScaleDeformableAttnFunction_fp32
            output = MultiScaleDeformableAttnFunction.apply(
                value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, self.im2col_step)
        else:
            output = multi_scale_deformable_attn_pytorch(
                value, spatial_shapes, sampling_locations, attention_weights)
        return output
'''

# BEVDet mmdet3d/models/necks/view_transformer.py (seed chapter 3.2.3 step 7).
BEVDET_VT = '''from mmdet3d.ops.bev_pool_v2.bev_pool import bev_pool_v2


class LSSViewTransformer(object):
    def voxel_pooling_v2(self, coor, depth, feat):
        ranks_bev, ranks_depth, ranks_feat, interval_starts, interval_lengths = self.voxel_pooling_prepare_v2(coor)
        bev_feat_shape = (depth.shape[0], int(self.grid_size[2]), int(self.grid_size[1]), int(self.grid_size[0]), feat.shape[-1])
        bev_feat = bev_pool_v2(depth, feat, ranks_depth,
                               ranks_feat, ranks_bev,
                               bev_feat_shape, interval_starts,
                               interval_lengths)
        return bev_feat
'''

# mmdet ResNet BasicBlock.
BASIC_BLOCK = '''import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.norm1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.norm2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


def functional_block(out, identity):
    out += identity
    out = F.relu(out, inplace=True)
    return out
'''


def _call_args(source: str, func_suffix: str) -> list:
    tree = cst.parse_module(source)
    found = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, node):
            if tree.code_for_node(node.func).endswith(func_suffix):
                found.append(node)

    tree.visit(_V())
    assert len(found) == 1, found
    return [(a.keyword.value if a.keyword else None, tree.code_for_node(a.value)) for a in found[0].args]


def test_msda_apply_drops_im2col_step_and_maps_by_catalog(tmp_path):
    r = fused_ops.rewrite_fused_call(BEVFORMER, line_of(BEVFORMER, "MultiScaleDeformableAttnFunction.apply("))
    assert r is not None and not r.auto_applicable           # no recorded shapes: head/dim limits unchecked
    op = load().fused_ops["multi_scale_deformable_attn"]
    rep = op.replacing("MultiScaleDeformableAttnFunction*.apply")
    args = _call_args(r.new_source, "mx_driving.multi_scale_deformable_attn")
    assert all(k is None for k, _ in args) and len(args) == len(op.signature)
    src_args = ["value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights", "self.im2col_step"]
    by_src_param = dict(zip(rep.signature, src_args))
    for param, (_, value) in zip(op.signature, args):
        src_param = next(s for s, d in rep.argument_map.items() if d == param)
        assert value == by_src_param[src_param]
    assert "im2col_step" not in r.new_source.split("mx_driving.multi_scale_deformable_attn")[1].split(")")[0]
    assert "import mx_driving\n" in r.new_source
    assert any("num_heads <= 8" in c for c in r.constraints)
    git_apply_check(tmp_path, "projects/bevformer/decoder.py", BEVFORMER,
                    to_fix("projects/bevformer/decoder.py", BEVFORMER, r, "NPA801-x", "fused_ops.multi_scale_deformable_attn").diff)


def test_msda_pytorch_reference_derives_level_start_index():
    r = fused_ops.rewrite_fused_call(BEVFORMER, line_of(BEVFORMER, "output = multi_scale_deformable_attn_pytorch("))
    args = [v for _, v in _call_args(r.new_source, "mx_driving.multi_scale_deformable_attn")]
    assert args == ["value", "spatial_shapes",
                    "torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))",
                    "sampling_locations", "attention_weights"]
    # the derived expression is the exclusive prefix sum of h*w per level
    import torch
    spatial_shapes = torch.tensor([[16, 24], [8, 12], [4, 6]])
    derived = eval(args[2], {"torch": torch, "spatial_shapes": spatial_shapes})
    assert derived.tolist() == [0, 384, 480]


def test_msda_shape_checks_decide_auto_applicability():
    line = line_of(BEVFORMER, "output = multi_scale_deformable_attn_pytorch(")
    ok = {"verified": ["num_heads = 8"], "violations": [], "covered": ["num_heads <= 8"], "complete": True}
    assert fused_ops.rewrite_fused_call(BEVFORMER, line, shape_checks=ok).auto_applicable
    bad = {"verified": [], "violations": ["num_heads = 16 (limit 8)"], "covered": [], "complete": True}
    r = fused_ops.rewrite_fused_call(BEVFORMER, line, shape_checks=bad)
    assert not r.auto_applicable and "num_heads = 16 (limit 8)" in r.constraints


def test_bev_pool_v2_to_v3_drops_intervals(tmp_path):
    r = fused_ops.rewrite_fused_call(BEVDET_VT, line_of(BEVDET_VT, "bev_feat = bev_pool_v2("))
    args = [v for _, v in _call_args(r.new_source, "mx_driving.bev_pool_v3")]
    assert args == ["depth", "feat", "ranks_depth", "ranks_feat", "ranks_bev", "bev_feat_shape"]
    assert list(load().fused_ops["bev_pool_v3"].signature) == ["depth", "feat", "ranks_depth", "ranks_feat",
                                                               "ranks_bev", "bev_feat_shape"]
    git_apply_check(tmp_path, "mmdet3d/models/necks/view_transformer.py", BEVDET_VT,
                    to_fix("mmdet3d/models/necks/view_transformer.py", BEVDET_VT, r, "x", "fused_ops.bev_pool_v3").diff)


def test_keyword_arguments_bind_by_name():
    src = ("import torch\n\n\ndef f(v, s, loc, w):\n"
           "    return multi_scale_deformable_attn_pytorch(v, attention_weights=w, sampling_locations=loc, value_spatial_shapes=s)\n")
    r = fused_ops.rewrite_fused_call(src, 5)
    args = [v for _, v in _call_args(r.new_source, "mx_driving.multi_scale_deformable_attn")]
    assert args[0] == "v" and args[1] == "s" and args[3] == "loc" and args[4] == "w"
    # an unknown keyword is not guessed at
    assert fused_ops.rewrite_fused_call(src.replace("attention_weights=w", "weights=w"), 5) is None


@pytest.mark.parametrize("needle,expected", [("out += identity", "out = mx_driving.npu_add_relu(out, identity)")])
def test_add_relu_basic_block(tmp_path, needle, expected):
    line = line_of(BASIC_BLOCK, needle)
    r = fused_ops.rewrite_add_relu(BASIC_BLOCK, line)
    assert r is not None and not r.auto_applicable           # operand shapes not recorded
    assert expected in r.new_source
    body = r.new_source.split("def forward")[1].split("def functional_block")[0]
    assert "out += identity" not in body and "self.relu(out)\n        return" not in body
    r2 = fused_ops.rewrite_add_relu(BASIC_BLOCK, line, shapes_equal="recorded shapes equal ([2, 64, 8, 12])")
    assert r2.auto_applicable and r2.new_source == r.new_source
    git_apply_check(tmp_path, "mmdet/models/backbones/resnet.py", BASIC_BLOCK,
                    to_fix("mmdet/models/backbones/resnet.py", BASIC_BLOCK, r, "x", "fused_ops.npu_add_relu").diff)
    assert fused_ops.rewrite_add_relu(r.new_source, line) is None
    # F.relu(out, inplace=True) is recognized through its qualified name
    rf = fused_ops.rewrite_add_relu(BASIC_BLOCK, line_of(BASIC_BLOCK, "out = F.relu(out, inplace=True)"))
    assert rf is not None and "    out = mx_driving.npu_add_relu(out, identity)\n    return out" in rf.new_source


def test_add_relu_requires_the_relu_of_the_same_tensor():
    src = "def f(out, identity, other):\n    out += identity\n    out = self.relu(other)\n    return out\n"
    assert fused_ops.rewrite_add_relu(src, 2) is None
