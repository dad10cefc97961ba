"""BEV map segmentation losses: per-class soft dice and the discriminative instance-embedding loss
(De Brabandere et al.) used by HDMapNet-style lane instance heads."""
import torch
import torch.nn.functional as F


def soft_dice_loss(logits, onehot, eps=1.0):
    probs = logits.sigmoid()
    total, present = 0.0, 0
    for c in range(probs.shape[1]):  # gt: small_op_loop medium
        p, t = probs[:, c], onehot[:, c]
        if t.sum() == 0:  # gt: sync medium
            continue
        inter = (p * t).sum()
        total = total + 1 - (2 * inter + eps) / (p.sum() + t.sum() + eps)
        present += 1
    return total / max(present, 1)


def discriminative_loss(embedding, instance_map, delta_v=0.5, delta_d=3.0):
    """embedding (B, E, H, W), instance_map (B, H, W) with 0 = background."""
    bs = embedding.shape[0]  # trap: sync shape arithmetic reads no values
    loss_var, loss_dist = 0.0, 0.0
    for b in range(bs):  # gt: small_op_loop medium inst
        ids = torch.unique(instance_map[b])  # gt: sync medium
        ids = ids[ids > 0]  # gt: sync low
        emb = embedding[b].flatten(1)
        inst = instance_map[b].flatten()
        centers = []
        for i in ids:  # gt: small_op_loop high inst; fused_op medium inst
            pixels = emb[:, inst == i]  # gt: sync medium
            mu = pixels.mean(1)
            loss_var = loss_var + F.relu((pixels - mu[:, None]).norm(dim=0) - delta_v).pow(2).mean()
            centers.append(mu)
        if len(centers) > 1:
            c = torch.stack(centers)
            dist = torch.cdist(c, c) + torch.eye(len(centers), device=c.device) * 2 * delta_d
            loss_dist = loss_dist + F.relu(2 * delta_d - dist).pow(2).mean()
    return (loss_var + loss_dist) / bs
