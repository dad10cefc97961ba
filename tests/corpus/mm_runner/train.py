"""Voxel-based 3D semantic scene completion (SECOND-like dense 3D backbone) trained with an mmcv-style
config, runner and hooks, on synthetic voxel grids."""
import importlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from runner import EpochBasedRunner, OptimizerHook, StepLrHook, TextLoggerHook, build_optimizer


class VoxelScenes(torch.utils.data.Dataset):
    def __init__(self, num_samples, grid, num_classes):
        self.n, self.grid, self.num_classes = num_samples, grid, num_classes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rng = np.random.default_rng(500 + i)
        occ = rng.uniform(size=self.grid) < 0.2
        feats = np.concatenate([occ[None], rng.normal(0, 1, (3,) + self.grid) * occ[None]]).astype(np.float32)
        labels = np.where(occ, rng.integers(1, self.num_classes, self.grid), 0)
        return {"voxels": torch.from_numpy(feats), "labels": torch.from_numpy(labels)}


class SSCNet(nn.Module):
    def __init__(self, in_channels, voxel_grid, num_classes, base_channels):
        super().__init__()
        c = base_channels
        self.enc1 = nn.Sequential(nn.Conv3d(in_channels, c, 3, padding=1), nn.BatchNorm3d(c), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(nn.Conv3d(c, 2 * c, 3, stride=2, padding=1), nn.BatchNorm3d(2 * c), nn.ReLU(inplace=True))
        self.dec = nn.Sequential(nn.ConvTranspose3d(2 * c, c, 2, stride=2), nn.BatchNorm3d(c), nn.ReLU(inplace=True))
        self.cls = nn.Conv3d(2 * c, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x):
        e1 = self.enc1(x)
        return self.cls(torch.cat([e1, self.dec(self.enc2(e1))], 1))

    def train_step(self, batch):
        logits = self(batch["voxels"])
        labels = batch["labels"]
        occupied = labels > 0
        loss_sem = F.cross_entropy(logits, labels, reduction="none")
        loss_sem = (loss_sem * (1.0 + 4.0 * occupied)).mean()
        geo = torch.logsumexp(logits[:, 1:], 1) - logits[:, 0]
        loss_geo = F.binary_cross_entropy_with_logits(geo, occupied.float())
        loss = loss_sem + loss_geo
        log_vars = {"loss_sem": loss_sem.detach(), "loss_geo": loss_geo.detach(), "loss": loss.detach()}
        return {"loss": loss, "log_vars": log_vars}


def main():
    cfg = importlib.import_module("config")
    torch.manual_seed(22)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = SSCNet(**cfg.model).to(device)
    dataset = VoxelScenes(cfg.data["num_samples"], cfg.model["voxel_grid"], cfg.model["num_classes"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data["samples_per_gpu"],
                                         num_workers=cfg.data["workers_per_gpu"])
    optimizer = build_optimizer(model, cfg.optimizer)
    runner = EpochBasedRunner(model, optimizer, loader, cfg.total_epochs)
    runner.register_hook(StepLrHook(**{k: v for k, v in cfg.lr_config.items() if k != "policy"}))
    runner.register_hook(OptimizerHook(**cfg.optimizer_config))
    runner.register_hook(TextLoggerHook(**cfg.log_config))
    runner.run(device)


if __name__ == "__main__":
    main()
