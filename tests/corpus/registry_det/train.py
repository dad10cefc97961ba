"""Config-driven 2D/BEV center-point detector in the mmdet3d style: the whole experiment is one config
dict, every part is built from the registry by its `type`."""
import argparse
import copy

import numpy as np
import torch

import models  # noqa: F401  (registers the detector parts)
from registry import MODELS, OPTIMIZERS

cfg = dict(
    model=dict(
        type="CenterNetDetector",
        backbone=dict(type="TinyResNet", in_channels=6, stage_channels=(32, 48, 64), strides=(1, 2, 2)),
        head=dict(type="CenterHeatmapHead", in_channels=64, num_classes=4, max_objs=24, min_sigma=0.8,
                  loss_heatmap=dict(type="GaussianFocalLoss", loss_weight=1.0),
                  loss_bbox=dict(type="WeightedL1Loss", loss_weight=0.25))),
    data=dict(grid=64, stride=4, num_samples=16, samples_per_gpu=2),
    optimizer=dict(type="AdamW", lr=2e-4, weight_decay=0.01),  # gt: optimizer medium opt
    lr_config=dict(warmup_iters=4, warmup_ratio=0.1),
    log_interval=50,
    max_iters=8,
)


class RasterScenes(torch.utils.data.Dataset):
    """Synthetic rasterized LiDAR BEV (6 height slices) with boxes given in feature-map cells."""

    def __init__(self, num_samples, grid, stride, max_objs):
        self.n, self.grid, self.stride, self.max_objs = num_samples, grid, stride, max_objs

    def __len__(self):
        return self.n

    def __getitem__(self, idx):
        rng = np.random.default_rng(1000 + idx)
        fm = self.grid // self.stride
        img = rng.normal(0, 0.2, (6, self.grid, self.grid)).astype(np.float32)
        centers = np.zeros((self.max_objs, 2), np.float32)
        sizes = np.zeros((self.max_objs, 2), np.float32)
        labels = np.zeros(self.max_objs, np.int64)
        valid = np.zeros(self.max_objs, np.float32)
        box_map = np.zeros((4, fm, fm), np.float32)
        for k in range(rng.integers(4, self.max_objs)):  # trap: small_op_loop numpy scene generation
            cx, cy = rng.uniform(1, fm - 1, 2)
            size = rng.uniform(1.0, 3.0, 2)
            centers[k], sizes[k], labels[k], valid[k] = (cx, cy), size, rng.integers(0, 4), 1.0
            x0, y0 = int(cx * self.stride), int(cy * self.stride)
            img[:, max(y0 - 2, 0):y0 + 2, max(x0 - 2, 0):x0 + 2] += 1.0
            box_map[:, int(cy), int(cx)] = (cx - int(cx), cy - int(cy), *np.log(size))
        return {"img": torch.from_numpy(img), "centers": torch.from_numpy(centers),
                "sizes": torch.from_numpy(sizes), "labels": torch.from_numpy(labels),
                "valid": torch.from_numpy(valid), "box_map": torch.from_numpy(box_map)}


def warmup_lr(optimizer, it, base_lr, warmup_iters, warmup_ratio):
    factor = 1.0 if it >= warmup_iters else warmup_ratio + (1 - warmup_ratio) * it / warmup_iters
    for group in optimizer.param_groups:  # trap: small_op_loop learning-rate bookkeeping on the host
        group["lr"] = base_lr * factor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-iters", type=int, default=cfg["max_iters"])
    args = ap.parse_args()
    torch.manual_seed(31)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = MODELS.build(copy.deepcopy(cfg["model"])).to(device)
    optimizer = OPTIMIZERS.build(cfg["optimizer"], params=model.parameters())  # gt: optimizer medium opt
    data_cfg = cfg["data"]
    dataset = RasterScenes(data_cfg["num_samples"], data_cfg["grid"], data_cfg["stride"],
                           cfg["model"]["head"]["max_objs"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=data_cfg["samples_per_gpu"], shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    history = []
    it = 0
    while it < args.max_iters:
        for batch in loader:  # trap: sync DataLoader iteration runs on the host
            if it >= args.max_iters:
                break
            warmup_lr(optimizer, it, cfg["optimizer"]["lr"], **cfg["lr_config"])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss, parts = model.forward_train(batch["img"], batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()  # trap: sync AdamW step counters are host tensors
            history.append(loss.detach())
            if it % cfg["log_interval"] == 0 and it > 0:
                print({k: round(v.item(), 4) for k, v in parts.items()})  # trap: sync logging every 50 iterations
            it += 1
    print("loss", " ".join(f"{v:.6f}" for v in torch.stack(history).tolist()))  # trap: sync once after training


if __name__ == "__main__":
    main()
