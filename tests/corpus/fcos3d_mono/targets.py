"""FCOS3D-style target assignment: every feature-map location of every level is matched to the GT whose
projected 3D centre is nearest, among those whose centre region contains it and whose size fits the level."""
import torch

INF = 1e8


def multi_apply(func, *args, **kwargs):
    """mmdet's helper: apply func to each element of the argument lists, transpose the results."""
    results = map(lambda *a: func(*a, **kwargs), *args)  # gt: small_op_loop medium perimg
    return tuple(map(list, zip(*results)))


def level_points(featmap_sizes, strides, dtype, device):
    mlvl_points = []
    for (h, w), stride in zip(featmap_sizes, strides):  # gt: small_op_loop low
        ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=device), torch.arange(w, dtype=dtype, device=device),
                                indexing="ij")
        mlvl_points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], -1) * stride + stride // 2)
    return mlvl_points


class FCOS3DAssigner:
    def __init__(self, num_classes, strides, regress_ranges, center_sample_radius=1.5):
        self.num_classes = num_classes
        self.strides = strides
        self.regress_ranges = regress_ranges
        self.radius = center_sample_radius

    def get_targets(self, points, gt_boxes2d, gt_labels, centers2d, depths, boxes3d):
        num_levels = len(points)
        expanded_ranges = [points[i].new_tensor(self.regress_ranges[i])[None].expand_as(points[i])  # trap: small_op_loop one expand per level
                           for i in range(num_levels)]
        concat_ranges = torch.cat(expanded_ranges, 0)
        concat_points = torch.cat(points, 0)
        num_points = [p.shape[0] for p in points]
        labels, box_targets = multi_apply(self._target_single, gt_boxes2d, gt_labels, centers2d, depths, boxes3d,  # gt: small_op_loop medium perimg
                                          points=concat_points, regress_ranges=concat_ranges, num_points_per_lvl=num_points)
        return torch.cat(labels), torch.cat(box_targets)

    def _target_single(self, gt_bboxes, gt_labels, centers2d, depths, boxes3d, points, regress_ranges, num_points_per_lvl):
        num_points = points.size(0)
        num_gts = len(gt_labels)  # trap: sync len() of a tensor is its shape
        if num_gts == 0:
            return gt_labels.new_full((num_points,), self.num_classes), points.new_zeros(num_points, 7)
        # 2D box sides as a sanity region, offsets and 3D attributes as the regression targets
        boxes3d_targets = torch.cat([centers2d, depths[:, None], boxes3d], -1)              # (G, 2 + 1 + 4)
        xs, ys = points[:, 0][:, None].expand(num_points, num_gts), points[:, 1][:, None].expand(num_points, num_gts)
        delta_xs, delta_ys = xs - centers2d[None, :, 0], ys - centers2d[None, :, 1]
        left, right = xs - gt_bboxes[None, :, 0], gt_bboxes[None, :, 2] - xs
        top, bottom = ys - gt_bboxes[None, :, 1], gt_bboxes[None, :, 3] - ys
        bbox_targets = torch.stack([left, top, right, bottom], -1)                            # (P, G, 4)

        # centre sampling: a location must lie within radius * stride of the projected centre
        stride = delta_xs.new_zeros(num_points, num_gts)
        lvl_begin = 0
        for lvl, n in enumerate(num_points_per_lvl):  # gt: small_op_loop low
            stride[lvl_begin:lvl_begin + n] = self.strides[lvl] * self.radius
            lvl_begin += n
        inside_center = (delta_xs.abs() < stride) & (delta_ys.abs() < stride)
        inside_box = bbox_targets.min(-1).values > 0
        max_extent = bbox_targets.max(-1).values
        inside_range = (max_extent >= regress_ranges[:, None, 0]) & (max_extent <= regress_ranges[:, None, 1])

        dists = torch.sqrt(delta_xs ** 2 + delta_ys ** 2)
        dists[~(inside_center & inside_box)] = INF  # trap: sync masked write, no read
        dists[~inside_range] = INF  # trap: sync masked write, no read
        min_dist, min_inds = dists.min(dim=1)
        labels = gt_labels[min_inds]
        labels[min_dist == INF] = self.num_classes  # trap: sync masked write, no read
        targets = boxes3d_targets[min_inds].clone()
        targets[:, :2] = targets[:, :2] - points                                                # offsets to the centre
        return labels, targets
