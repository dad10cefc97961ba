"""A small epoch-based runner with hooks (optimizer, LR, logging), shaped like mmcv's."""
import time

import torch


def build_optimizer(model, cfg):
    cfg = dict(cfg)
    optim_cls = getattr(torch.optim, cfg.pop("type"))
    return optim_cls(model.parameters(), **cfg)  # gt: optimizer medium opt


class Hook:
    def before_epoch(self, runner):
        pass

    def after_iter(self, runner):
        pass


class OptimizerHook(Hook):
    def __init__(self, grad_clip=None):
        self.grad_clip = grad_clip

    def after_iter(self, runner):
        runner.optimizer.zero_grad()
        runner.outputs["loss"].backward()
        if self.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(runner.model.parameters(), **self.grad_clip)
            runner.log_buffer["grad_norm"] = float(grad_norm)  # gt: sync medium
        runner.optimizer.step()  # trap: sync optimizer bookkeeping lives on the host


class StepLrHook(Hook):
    def __init__(self, step, gamma):
        self.step, self.gamma = step, gamma

    def before_epoch(self, runner):
        factor = self.gamma ** sum(runner.epoch >= s for s in self.step)
        for group, base in zip(runner.optimizer.param_groups, runner.base_lrs):
            group["lr"] = base * factor


class TextLoggerHook(Hook):
    def __init__(self, interval):
        self.interval = interval

    def after_iter(self, runner):
        if runner.inner_iter % self.interval == 0:
            items = [f"{k}: {v:.6f}" for k, v in runner.log_buffer.items()]
            print(f"Epoch [{runner.epoch + 1}][{runner.inner_iter + 1}] " + ", ".join(items), flush=True)


class EpochBasedRunner:
    def __init__(self, model, optimizer, data_loader, max_epochs):
        self.model, self.optimizer, self.data_loader = model, optimizer, data_loader
        self.max_epochs = max_epochs
        self.hooks = []
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.epoch = self.inner_iter = 0
        self.outputs, self.log_buffer = {}, {}

    def register_hook(self, hook):
        self.hooks.append(hook)

    def call_hook(self, name):
        for hook in self.hooks:  # trap: small_op_loop three hooks, host-side dispatch
            getattr(hook, name)(self)

    def run(self, device):
        for self.epoch in range(self.max_epochs):
            self.call_hook("before_epoch")
            started = time.time()
            for self.inner_iter, batch in enumerate(self.data_loader):  # trap: sync DataLoader runs on the host
                batch = {k: v.to(device) for k, v in batch.items()}
                self.outputs = self.model.train_step(batch)
                self.log_buffer = {k: v.item() for k, v in self.outputs["log_vars"].items()}  # gt: sync medium
                self.call_hook("after_iter")
            print(f"epoch {self.epoch + 1} took {time.time() - started:.2f}s")
