"""Multi-modal trajectory losses: bivariate Gaussian mixture NLL and displacement metrics."""
import math

import torch


def gmm_nll(pred_mu, pred_scale_tril, mode_logits, gt, valid):
    """pred_mu (A, K, T, 2), pred_scale_tril (A, K, T, 2, 2), gt (A, T, 2), valid (A, T)."""
    cov = pred_scale_tril @ pred_scale_tril.transpose(-1, -2)
    sign, logabsdet = torch.linalg.slogdet(cov)  # gt: cpu_fallback high; sync low
    diff = (gt[:, None] - pred_mu).unsqueeze(-1)
    # Mahalanobis distance with the precision matrix from the Cholesky factor
    precision = torch.cholesky_inverse(pred_scale_tril)  # gt: cpu_fallback high; sync low
    maha = (diff.transpose(-1, -2) @ precision @ diff).squeeze(-1).squeeze(-1)
    log_prob = -0.5 * (maha + logabsdet) - math.log(2 * math.pi)
    log_prob = (log_prob * valid[:, None]).sum(-1)
    log_mix = torch.log_softmax(mode_logits, -1)
    return -torch.logsumexp(log_mix + log_prob, -1).mean()


def min_ade(pred_mu, gt, valid):
    dist = torch.hypot(pred_mu[..., 0] - gt[:, None, :, 0], pred_mu[..., 1] - gt[:, None, :, 1])  # gt: cpu_fallback medium
    ade = (dist * valid[:, None]).sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)
    return ade.min(-1).values
