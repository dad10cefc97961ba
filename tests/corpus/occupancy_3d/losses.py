"""Occupancy losses: class-balanced cross entropy, per-class scene-level affinity, geometry term."""
import torch
import torch.nn.functional as F

IGNORE = 255


def balanced_ce(logits, target, class_freq):
    """Cross entropy with weights from the classes present in this batch."""
    present, counts = torch.unique(target[target != IGNORE], return_counts=True)  # gt: sync high unique
    weights = torch.ones(logits.shape[1], device=logits.device)
    weights[present] = 1.0 / torch.log(1.2 + counts.float() / counts.sum())
    weights = weights * class_freq.to(logits.device)
    return F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)


def scene_class_affinity(logits, target, num_classes):
    """MonoScene's scal loss: precision/recall/specificity per class, averaged over present classes."""
    prob = logits.softmax(1)
    valid = target != IGNORE
    target = target.masked_fill(~valid, 0)  # trap: sync masked write via masked_fill
    loss, count = 0.0, 0
    for c in range(num_classes):  # gt: small_op_loop high scal
        p = prob[:, c][valid]  # gt: sync medium scal-sync
        t = (target[valid] == c).float()  # gt: sync medium scal-sync
        if t.sum() > 0:  # gt: sync medium scal-sync
            count += 1
            nominator = (p * t).sum()
            precision = nominator / p.sum().clamp(min=1e-5)
            recall = nominator / t.sum()
            specificity = ((1 - p) * (1 - t)).sum() / (1 - t).sum().clamp(min=1e-5)
            loss = loss + F.binary_cross_entropy(precision.clamp(0, 1), torch.ones_like(precision))
            loss = loss + F.binary_cross_entropy(recall.clamp(0, 1), torch.ones_like(recall))
            loss = loss + F.binary_cross_entropy(specificity.clamp(0, 1), torch.ones_like(specificity))
    return loss / max(count, 1)
