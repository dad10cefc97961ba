"""Experiment configuration in the mmcv style: plain dicts, built by the runner."""
model = dict(in_channels=4, voxel_grid=(8, 32, 32), num_classes=3, base_channels=16)
optimizer = dict(type="AdamW", lr=1e-3, weight_decay=0.01)  # gt: optimizer medium opt
optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(policy="step", step=[6], gamma=0.1)
data = dict(samples_per_gpu=2, workers_per_gpu=0, num_samples=10)
log_config = dict(interval=1)
total_epochs = 2
