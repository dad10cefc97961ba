"""Documentation of the rules found in the user's source: the fused-op rules NPA801-NPA818 (matchers.py, structure.py; the
keys are `SourceMatch.kind`), CUDA-only code NPA907-NPA909 (dispatch.py) and NPA602 (check.py).

They live apart from the matchers, which need libcst, so that `npu_advise.rules.all_rules()` and a
recommend() call on a trace without source locations register them without importing the parser.
"""
from __future__ import annotations

from npu_advise.rules import Rule

_WHY_LAUNCH = ("every small op is one host dispatch and one kernel launch; on the NPU the host usually cannot "
               "issue them as fast as the device runs them, so the device idles (host-bound)")
FUSED_OP_RULES = {
    "msda": Rule("NPA801", "msda-fused-op", "fused_op",
                 "A call of multi_scale_deformable_attn_pytorch / MultiScaleDeformableAttnFunction*.apply / "
                 "MSDeformAttnFunction.apply (BEVFormer, Deformable-DETR, mmcv), or a function of any name that "
                 "computes it: a value split by the levels' sizes, one grid_sample per level in a loop, stacked and "
                 "weighted-summed (reported at the loop). Recorded shapes check heads, levels x points and dims.",
                 "The pytorch reference runs one grid_sample per level plus stacks, transposes and a weighted "
                 "sum (forward and backward); " + _WHY_LAUNCH + ".",
                 "Call mx_driving.multi_scale_deformable_attn(value, spatial_shapes, level_start_index, "
                 "sampling_locations, attention_weights): drop im2col_step, derive level_start_index from "
                 "spatial_shapes when absent. Valid for heads <= 8, dims <= 256 and % 8, levels*points <= 64, fp32."),
    "bev_pool_v2": Rule("NPA802", "bev-pool-v3", "fused_op",
                        "A call of BEVDet's bev_pool_v2(...), or hand-written voxel pooling (LSS): points sorted by "
                        "voxel rank, then a cumulative sum over ranks or a scatter into the BEV grid (reported at the "
                        "sort); or one accumulating scatter of point features by a linearized cell index over at least "
                        "three coordinates (`out.index_put_((b * H * W + y * W + x,), feats, accumulate=True)`, "
                        "`index_add_` / `scatter_add_` along dim 0, or `index_put_` with >= 3 cell-index tensors), "
                        "reported at the scatter with the lines calling its function (a scatter of a constant is a count "
                        "per cell, not pooling).",
                        "bev_pool_v2 is a CUDA extension; on the NPU it needs the sorted interval tensors and a "
                        "slower kernel.",
                        "Call mx_driving.bev_pool_v3(depth, feat, ranks_depth, ranks_feat, ranks_bev, "
                        "bev_feat_shape) without interval_starts/interval_lengths (fp32, C % 8 == 0, C <= 360)."),
    "add_relu": Rule("NPA803", "resnet-add-relu", "fused_op",
                     "`out += identity` directly followed by `out = relu(out)` (ResNet BasicBlock/Bottleneck).",
                     "Two element-wise kernels per residual block, each a launch and a full read/write of the tensor.",
                     "out = mx_driving.npu_add_relu(out, identity) (same shapes, fp16/fp32)."),
    "maxpool": Rule("NPA804", "maxpool-forward-only", "fused_op",
                    "nn.MaxPool2d(3, 2, 1) (the ResNet stem).",
                    "The generic max-pool kernel is slower than mx_driving's specialised one.",
                    "On inference/eval paths only: mx_driving.npu_max_pool2d(x, 3, 2, 1). It has NO backward, so "
                    "it must not replace a pooling layer that training backpropagates through; never auto-applied."),
    "deform_conv": Rule("NPA805", "mmcv-deform-conv", "fused_op",
                        "mmcv.ops deformable convolution (DeformConv2d, ModulatedDeformConv2d, their functions).",
                        "mmcv's DCN falls back to slow generic paths on the NPU.",
                        "mx_driving.deform_conv2d / modulated_deform_conv2d (or the patcher's DCN patch); fp32, "
                        "C_in % 64 == 0, 3x3 kernel for the modulated version."),
    "sparse_conv": Rule("NPA806", "spconv-sparse-conv", "fused_op",
                        "spconv / mmcv.ops sparse convolution modules.",
                        "spconv is CUDA-only.",
                        "mx_driving.SparseConv3d / SubMConv3d / SparseConvTensor (kernel 1-3, dilation = groups = 1)."),
    "centerpoint_targets": Rule("NPA807", "centerpoint-gaussian-targets", "fused_op",
                                "A per-object Python loop drawing gaussian heatmap targets: it calls a "
                                "draw_*gaussian* / gaussian_radius helper (CenterPoint's get_targets_single), or "
                                "computes the gaussian itself on the device (`torch.exp(-(dx ** 2 + dy ** 2) / "
                                "(2 * sigma ** 2))`) and merges it into the heatmap with an element-wise max "
                                "(`torch.maximum(heat, g)`, `torch.max(region, g, out=region)`); numpy / math "
                                "gaussians of a data pipeline are not device work and are left alone.",
                                "Each object costs several tiny ops and `.item()` syncs; " + _WHY_LAUNCH + ".",
                                "mx_driving.npu_gaussian(...) computes center_int, radius, mask, ind and anno_box for "
                                "all objects at once (see the seed's BEVDet rewrite), "
                                "mx_driving.npu_draw_gaussian_to_heatmap draws the gaussians of all objects into the "
                                "heatmap (the op named for a written-out gaussian); the whole per-head assignment "
                                "(heatmap included) is mx_driving.npu_assign_target_of_single_head(boxes, cur_class_id, "
                                "num_classes, out_size_factor, gaussian_overlap, min_radius, voxel_size, pc_range, "
                                "feature_map_size, ...) (BEVFusion, CenterPoint in DrivingSDK; boxes 2-D)."),
    "torch_scatter": Rule("NPA808", "torch-scatter", "fused_op",
                          "torch_scatter.scatter_* calls, a Python loop over unique() ids that masks each group "
                          "(`ids == g`) and reduces it (max / mean / sum), or a reduction by index: "
                          "`Tensor.index_reduce` / `scatter_reduce` with reduce='amax' (along dim 0) or 'mean'.",
                          "torch_scatter is a CUDA extension without NPU kernels; a per-group loop is one mask, "
                          "one boolean-index read (a sync) and one reduction per group; index_reduce has no NPU "
                          "kernel (it falls back to the CPU, NPA401).",
                          "mx_driving.scatter_max / scatter_mean / scatter_add (fp32 src, int32 index; scatter_max "
                          "reduces dim 0 only and takes (updates, indices, out))."),
    "hungarian_host": Rule("NPA809", "host-hungarian-match", "fused_op",
                           "scipy.optimize.linear_sum_assignment, or the project's own assignment solver "
                           "(`*assignment*`, `*hungarian*`), on a cost matrix copied from the device (.cpu()/.numpy()); "
                           "the copy's line is a second location.",
                           "The device->host copy blocks the stream (a sync) and the assignment runs on the host.",
                           "mx_driving.hungarian_match(cost_matrix) on the device (fp32); the results stay on the device."),
    "deformable_aggregation": Rule("NPA810", "deformable-aggregation", "fused_op",
                                   "Deformable aggregation written as loops: nested loops with one grid_sample per "
                                   "camera and level, or one loop whose samples are weighted and accumulated "
                                   "(Sparse4D / SparseDrive, multi-camera BEV lifting); reported at the outer loop.",
                                   "One grid_sample plus a multiply and an add per camera and level, forward and "
                                   "backward; " + _WHY_LAUNCH + ".",
                                   "mx_driving.deformable_aggregation(mc_ms_feat, spatial_shape, scale_start_index, "
                                   "sampling_location, weights) samples every camera and level in one kernel "
                                   "(group == 8, cameras <= 6, scales <= 4, fp16/fp32)."),
    "points_in_box": Rule("NPA811", "points-in-boxes", "fused_op",
                          "A per-box Python loop testing which points lie inside each (rotated) box: offsets "
                          "compared with half the box size (`abs(local) <= size / 2`), reduced with `.all` or `&`.",
                          "Several small ops per box (subtract, rotate, abs, compare, reduce); " + _WHY_LAUNCH + ".",
                          "mx_driving.points_in_box(boxes, pts) tests every point against every box in one kernel "
                          "(argument order reversed against mmcv; fp32; check the result layout)."),
    "rms_norm": Rule("NPA812", "rms-norm", "fused_op",
                     "RMSNorm written out: the input times the reciprocal square root of its mean square plus eps "
                     "(`x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)`, or `x / sqrt(...)`).",
                     "Four to six element-wise and reduction kernels per norm layer, each a launch and a full pass "
                     "over the activations; " + _WHY_LAUNCH + ".",
                     "torch_npu.npu_rms_norm(x, gamma, epsilon)[0] (used by Cosmos, GR00T, OpenVLA, MagicDrive in "
                     "DrivingSDK)."),
    "rotary_mul": Rule("NPA813", "rotary-embedding", "fused_op",
                       "Rotary position embedding written out: `x * cos + rotate_half(x) * sin` where rotate_half "
                       "returns `torch.cat((-x2, x1), dim=-1)`.",
                       "A slice, a negation, a concatenation, two multiplies and an add per query and key tensor; "
                       + _WHY_LAUNCH + ".",
                       "torch_npu.npu_rotary_mul(x, cos, sin)."),
    "fusion_attention": Rule("NPA814", "fusion-attention", "fused_op",
                             "Attention written out in one function: `q @ k.transpose(-2, -1)`, a softmax of it, then "
                             "the probabilities `@ v` (masks, scaling and dropout in between allowed).",
                             "Two batched matmuls, a softmax and the scaling/mask/dropout kernels, with the full "
                             "attention matrix written to and read from device memory.",
                             "torch_npu.npu_fusion_attention(q, k, v, head_num, input_layout, ...)[0] (float16 / "
                             "bfloat16), as in DrivingSDK's DiffusionDrive, GameFormer, StreamPETR, VAD."),
    "host_nms": Rule("NPA815", "greedy-nms-loop", "fused_op",
                     "Greedy non-maximum suppression as a Python loop: boxes sorted by score, then a loop that keeps "
                     "the first and refilters the order by an IoU threshold (`order = order[1:][ious <= thr]`).",
                     "Per kept box: an IoU computation, a comparison and a boolean-mask read (a device->host sync); "
                     + _WHY_LAUNCH + ".",
                     "mx_driving.nms3d / nms3d_normal for BEV boxes, torch_npu.npu_nms_rotated for 2-D boxes: one "
                     "kernel for the whole suppression (argument layouts differ: map boxes and scores)."),
    "voxelization": Rule("NPA816", "mmcv-voxelization", "fused_op",
                         "mmcv / mmdetection3d voxelization: `mmcv.ops.Voxelization`, `mmcv.ops.voxelization`, "
                         "`mmdet3d.ops.Voxelization` (qualified through the file's imports; a class of the project's "
                         "own of that name is not it).",
                         "mmcv's voxelization is a CUDA extension (hard_voxelize_forward / dynamic_voxelize_forward): "
                         "it has no NPU kernel, so the point cloud is voxelized elsewhere or not at all.",
                         "mx_driving.Voxelization(voxel_size, point_cloud_range, max_num_points, max_voxels) (BEVFusion, "
                         "CenterPoint in DrivingSDK): fp32 points, max_num_points <= 1000, layout='ZYX' in place of "
                         "mmcv's op, the default 'XYZ' in place of mmdetection3d's."),
    "batch_matmul": Rule("NPA817", "small-batch-matmul", "fused_op",
                         "A matmul the profile recorded with 4-6-D operands whose last two dims are a 4x4 (or 3x3) matrix "
                         "and a 4x1 (or 3x1) vector (lidar-to-camera point projection, BEVDet / Sparse4D): found from "
                         "the recorded shapes at the line, whatever the code is called.",
                         "A general batched matmul on tiny 4x4 matrices spends its time on broadcasting and launch "
                         "overhead, not arithmetic; the backward repeats it.",
                         "mx_driving.npu_batch_matmul(projection_mat, pts_extend) (the patcher's batch_matmul patch "
                         "does the same for every such matmul): same result for these shapes, fp32."),
    "mmcv_op": Rule("NPA818", "mmcv-cuda-op", "fused_op",
                    "A call of an mmcv.ops CUDA op that mx_driving provides under the same name (qualified through the "
                    "file's imports, aliases included): sigmoid_focal_loss, box_iou_rotated, boxes_iou_bev, nms3d / "
                    "nms_bev, roi_align_rotated, furthest_point_sample, knn, three_nn, three_interpolate, "
                    "grouping_operation, border_align, dynamic_scatter, RoIAwarePool3d (catalog fused_ops.mmcv_ops).",
                    "mmcv.ops are CUDA extensions: without an NPU kernel the call fails on the NPU, or the code around "
                    "it keeps a slower pure-PyTorch fallback.",
                    "Call the mx_driving op named in the finding; argument orders and layouts can differ from mmcv's "
                    "(roi_align_rotated takes pooled_height and pooled_width separately), so check each call against "
                    "its documentation."),
    "furthest_point_sampling": Rule(
        "NPA819", "furthest-point-sampling", "fused_op",
        "Iterative furthest point sampling written in PyTorch (PointNet++ / VoteNet / 3DSSD fallbacks): a loop that "
        "lowers a running distance to the chosen points with an elementwise minimum (`torch.minimum`, `torch.min`, "
        "`torch.where(x < d, x, d)` or `d[m] = x[m]` under `m = x < d`) and takes its argmax as the next point, which "
        "the loop reads again; any function name, for or while.",
        "One iteration per sampled point (hundreds to thousands per step), each a gather, a distance, a minimum and "
        "an argmax: the loop is sequential by nature, so it cannot be vectorized; " + _WHY_LAUNCH + ".",
        "mx_driving.furthest_point_sampling(points, num_points) samples all points in one kernel (fp32 points "
        "(B, N, 3); check the index dtype and layout the code expects)."),
    "rotated_iou": Rule(
        "NPA820", "rotated-iou-written-out", "fused_op",
        "Rotated BEV IoU written in PyTorch (anchor assigners, rotated NMS, IoU losses): one function whose box "
        "corners are rotated by the cos and the sin of the same yaw (`dx * cos - dy * sin`, or a rotation matrix "
        "stacked from both and a matmul), whose intersection polygon's area is a shoelace sum of cross products "
        "(`(x * y_next - y * x_next).sum(-1)`, or accumulated in a clipping loop) and which divides the "
        "intersection by the union (`inter / (area_a + area_b - inter)`, clamped or through a `union` name); the "
        "rotation and the area may sit in helpers of the same file that it calls. Reported at the function, with "
        "its call sites in the file as more locations; any function name.",
        "Corners, edge crossings, point-in-box tests, a vertex sort and the shoelace sum over N x M x 24 vertices: "
        "tens of kernels and large intermediates for every IoU matrix, forward (and backward when it is a loss); "
        + _WHY_LAUNCH + ".",
        "mx_driving.boxes_iou_bev(boxes_a, boxes_b) (or box_iou_rotated for an aligned / mode='iof' variant) "
        "computes the IoU matrix in one kernel: map the box layout (x, y, w, l, yaw columns, the angle's sign and "
        "unit) and check the result against the written-out function on your boxes."),
    "dynamic_voxelization": Rule(
        "NPA821", "dynamic-voxelization-written-out", "fused_op",
        "Dynamic voxelization written in PyTorch: point coordinates quantized to cells (`((pts[:, :3] - pc_min) / "
        "voxel_size).floor().long()`, `//`, `torch.div(..., rounding_mode='floor')`), `torch.unique(cells, dim=0, "
        "return_inverse=True)` over them (or over a key linearized from them), and the point features reduced by "
        "the inverse index (index_add_ / scatter_add_ / scatter_reduce / index_reduce / index_put_: sums and "
        "counts for a mean, or a max). Reported at the innermost loop holding all three (typically one per sample), "
        "else at the unique; a unique over ids that are not cells, or cells never reduced, is not it.",
        "A sort-based unique over all points (a device->host read of the number of voxels), then one scatter per "
        "reduction, repeated per sample when it sits in a loop over the batch; " + _WHY_LAUNCH + ".",
        "mx_driving.Voxelization(voxel_size, point_cloud_range, max_num_points=-1) (dynamic: the voxel "
        "coordinate of every point), then mx_driving.dynamic_scatter(feats, coors, 'mean' or 'max') for the "
        "per-voxel features and coordinates, for the whole batch at once (fp32 points; check the coordinate "
        "layout, z-y-x against x-y-z, and the batch column)."),
}
# Structural matches (structure.py) of the same ops share their rule.
FUSED_OP_RULES["msda_structure"] = FUSED_OP_RULES["msda"]
FUSED_OP_RULES["voxel_pooling"] = FUSED_OP_RULES["bev_pool_v2"]
FUSED_OP_RULES["bev_splat"] = FUSED_OP_RULES["bev_pool_v2"]
FUSED_OP_RULES["group_loop"] = FUSED_OP_RULES["torch_scatter"]
FUSED_OP_RULES["index_reduce"] = FUSED_OP_RULES["torch_scatter"]
FUSED_OP_RULES["gaussian_heatmap"] = FUSED_OP_RULES["centerpoint_targets"]

SOURCE_RULES = {
    "cuda_dispatch": Rule(
        "NPA907", "cuda-only-dispatch", "migration",
        "A branch on `torch.cuda.is_available()`, `x.is_cuda` or `x.device.type == 'cuda'` whose CUDA arm calls a "
        "compiled extension (an autograd Function's `.apply`, an `ext_module` op) and whose other arm is a "
        "pure-PyTorch path (or raises).",
        "On an NPU the CUDA test is false: every step silently runs the other arm -- for multi-scale deformable "
        "attention the pure-PyTorch reference, one grid_sample per level plus stacks and a weighted sum, forward "
        "and backward, many small kernels instead of one fused kernel (the seed guide's BEVFormer example).",
        "Add an NPU arm, tested first, that calls the mx_driving op (the diff maps the arguments from the catalog: "
        "`im2col_step` dropped, `level_start_index` derived from `spatial_shapes` when absent). Where the arm's call "
        "is not mapped, the finding names the op that replaces the extension by the extension op's name (catalog "
        "`cuda_migration.extension_ops`: `ms_deform_attn_forward` -> multi_scale_deformable_attn, "
        "`pillar_scatter_max_cuda` -> scatter_max), without a diff. Where the op has a "
        "pure-PyTorch reference the other arm is that reference, so the two can be compared on your inputs; a "
        "verification run off the NPU never takes the NPU arm, so it reports the arm as not verifiable."),
    "cuda_extension": Rule(
        "NPA908", "cuda-extension", "migration",
        "A compiled extension loaded or built by the project: `ext_loader.load_ext(...)`, "
        "`torch.utils.cpp_extension.load/CUDAExtension`, imports of `*_cuda` / `*_ext` modules.",
        "A CUDA build of the extension has no NPU kernels: its ops fail on the NPU or the code around them keeps a "
        "slower fallback.",
        "Use the mx_driving op named in the finding (catalog `cuda_migration.extension_ops`); where none exists, the "
        "kernel must be ported or its pure-PyTorch path used."),
    "cuda_calls": Rule(
        "NPA909", "cuda-calls-without-transfer", "migration",
        "`.cuda()` / `torch.cuda.*` calls in a project where no checked file imports torch_npu "
        "(`from torch_npu.contrib import transfer_to_npu`) or mx_driving (which imports it).",
        "Without transfer_to_npu, `.cuda()` raises on an NPU machine (torch is not compiled with CUDA) and "
        "`torch.cuda.*` reports no device.",
        "Import `torch_npu` and `from torch_npu.contrib import transfer_to_npu` once at the training entry point "
        "(NPA902 adds it there when a profile names the entry point)."),
    "optimizer_constructor": Rule(
        "NPA602", "unfused-optimizer-in-source", "optimizer",
        "A torch.optim constructor (AdamW, Adam, SGD, Adadelta, RMSprop; qualified through the file's imports) or an "
        "mmcv/mmengine config `optimizer = dict(type='AdamW', ...)`, found by `check` without a profile (NPA601 is "
        "the same problem measured in a trace).",
        "The torch implementation runs several small ops per parameter tensor each step; on the NPU each is a host "
        "launch (see NPA601).",
        "torch_npu.optim.NpuFused* with the same arguments (the diff), or type='NpuFusedAdamW' in the config."),
}
