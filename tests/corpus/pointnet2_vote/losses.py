"""VoteNet losses: vote regression to the centers of the boxes containing each seed, objectness from the
distance of each proposal to its nearest object, and box terms on the positive proposals."""
import math

import torch
import torch.nn.functional as F

from pointnet2_ops import gather_points

NEAR, FAR = 0.6, 1.2


def vote_loss(out, vote_target, vote_mask):
    seed_target = gather_points(vote_target, out["seed_inds"])                # (B, S, 3) offsets
    seed_mask = vote_mask.gather(1, out["seed_inds"]).float()
    err = (out["vote_xyz"] - (out["seed_xyz"] + seed_target)).abs().sum(-1)
    return (err * seed_mask).sum() / (seed_mask.sum() + 1e-6)


def heading_to_bin(heading, num_bins):
    angle_per_bin = 2 * math.pi / num_bins
    shifted = torch.remainder(heading + angle_per_bin / 2, 2 * math.pi)
    bins = (shifted / angle_per_bin).floor().long().clamp(max=num_bins - 1)
    return bins, (shifted - (bins.float() * angle_per_bin + angle_per_bin / 2)) / (angle_per_bin / 2)


def votenet_loss(out, targets, num_heading_bins, num_classes):
    centers, valid = targets["centers"], targets["valid"]
    dist = torch.cdist(out["proposal_xyz"], centers).masked_fill(~valid[:, None], 1e4)  # trap: sync masked_fill reads no values
    near_dist, assigned = dist.min(-1)                                         # (B, P)
    obj_label = (near_dist < NEAR).long()
    obj_weight = ((near_dist < NEAR) | (near_dist > FAR)).float()
    obj_ce = F.cross_entropy(out["objectness"].transpose(1, 2), obj_label, weight=out["objectness"].new_tensor([0.2, 0.8]),
                             reduction="none")
    loss = 0.5 * vote_loss(out, targets["vote_target"], targets["vote_mask"])
    loss = loss + (obj_ce * obj_weight).sum() / (obj_weight.sum() + 1e-6)

    # semantic target of a proposal: the majority label of its 8 nearest seeds
    knn = torch.cdist(out["proposal_xyz"], out["seed_xyz"]).topk(8, dim=-1, largest=False).indices
    seed_sem = targets["point_sem"].gather(1, out["seed_inds"])
    sem_target = torch.mode(seed_sem.gather(1, knn.flatten(1)).view_as(knn), dim=-1).values  # gt: cpu_fallback high; sync low

    pos = torch.nonzero(obj_label.flatten()).squeeze(1)  # gt: sync medium
    if pos.numel() > 0:  # trap: sync numel of an existing tensor needs no read
        flat = lambda t: t.flatten(0, 1)[pos]                                # noqa: E731
        gt_assigned = assigned.flatten()[pos]
        batch_of = pos // assigned.shape[1]
        gt_center = centers[batch_of, gt_assigned]
        loss = loss + F.smooth_l1_loss(flat(out["center"]), gt_center, beta=0.1)
        head_bin, head_res = heading_to_bin(targets["heading"][batch_of, gt_assigned], num_heading_bins)
        loss = loss + 0.1 * F.cross_entropy(flat(out["heading_cls"]), head_bin)
        res_pred = flat(out["heading_res"]).gather(1, head_bin[:, None]).squeeze(1)
        loss = loss + F.smooth_l1_loss(res_pred, head_res)
        loss = loss + 0.1 * F.cross_entropy(flat(out["size_cls"]), targets["size_cls"][batch_of, gt_assigned])
        loss = loss + 0.1 * F.cross_entropy(flat(out["sem_cls"]), flat(sem_target))
    return loss, int(pos.numel())  # trap: sync numel is known on the host
