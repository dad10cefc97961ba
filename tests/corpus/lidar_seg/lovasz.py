"""Lovasz-softmax loss (Berman et al. 2018) for multi-class segmentation of points."""
import torch


def lovasz_grad(gt_sorted):
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax_flat(probas, labels, num_classes):
    losses = []
    for c in range(num_classes):  # gt: small_op_loop medium lovasz
        fg = (labels == c).float()
        if fg.sum() == 0:  # gt: sync medium
            continue
        errors = (fg - probas[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()
