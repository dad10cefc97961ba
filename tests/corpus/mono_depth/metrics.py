"""Standard depth metrics (computed on the host from numpy arrays)."""
import numpy as np


def depth_metrics(pred, gt):
    valid = gt > 1e-3
    pred, gt = pred[valid], gt[valid]
    thresh = np.maximum(gt / pred, pred / gt)
    return {"a1": float((thresh < 1.25).mean()), "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
            "rmse": float(np.sqrt(((gt - pred) ** 2).mean()))}
