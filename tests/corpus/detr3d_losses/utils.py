"""mmdet-style helpers: loss parsing for logging, padding of variable-length query sets."""
from collections import OrderedDict

import torch


def parse_losses(losses):
    """Sum the loss terms and return the scalar values for the logger (as mmdet's runner does)."""
    log_vars = OrderedDict()
    for name, value in losses.items():
        log_vars[name] = value.mean()
    loss = sum(v for k, v in log_vars.items() if "loss" in k)
    log_vars["loss"] = loss
    return loss, {k: v.item() for k, v in log_vars.items()}  # gt: sync medium


def pad_queries(per_sample, lengths):
    """Stack variable-length (n_i, C) tensors into (B, max_n, C) plus a validity mask."""
    max_len = int(lengths.max())  # gt: sync medium
    out = per_sample[0].new_zeros(len(per_sample), max_len, per_sample[0].shape[-1])
    mask = torch.zeros(len(per_sample), max_len, dtype=torch.bool, device=out.device)
    for i, t in enumerate(per_sample):  # gt: small_op_loop low
        out[i, :t.shape[0]] = t
        mask[i, :t.shape[0]] = True
    return out, mask


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
