"""A Lightning-like trainer in plain PyTorch: the module defines training_step / configure_optimizers and
logs with self.log; callbacks get hooks around every batch and epoch."""
import os
import tempfile

import torch


class Callback:
    def on_train_batch_end(self, trainer, module, outputs, batch_idx):
        pass

    def on_train_epoch_end(self, trainer, module):
        pass


class TrainModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trainer = None
        self._logged = {}

    def log(self, name, value, prog_bar=False):
        self._logged[name] = (value.detach() if torch.is_tensor(value) else value, prog_bar)


class ProgressPrinter(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch_idx):
        shown = {k: v for k, (v, bar) in module._logged.items() if bar}
        text = " ".join(f"{k} {v:.5f}" for k, v in shown.items())  # gt: sync medium
        print(f"epoch {trainer.current_epoch} step {trainer.global_step} {text}", flush=True)


class Checkpoint(Callback):
    def __init__(self, dirpath):
        self.dirpath = dirpath

    def on_train_epoch_end(self, trainer, module):
        state = {k: v.cpu() for k, v in module.state_dict().items()}  # trap: sync checkpoint once per epoch
        torch.save({"epoch": trainer.current_epoch, "state_dict": state},
                   os.path.join(self.dirpath, f"epoch_{trainer.current_epoch}.ckpt"))


class MiniTrainer:
    def __init__(self, max_epochs, callbacks=(), gradient_clip_val=None, device="cpu"):
        self.max_epochs, self.callbacks = max_epochs, list(callbacks)
        self.gradient_clip_val, self.device = gradient_clip_val, torch.device(device)
        self.current_epoch = self.global_step = 0

    def _call(self, hook, *args):
        for cb in self.callbacks:  # trap: small_op_loop two callbacks, host-side dispatch
            getattr(cb, hook)(self, *args)

    def _to_device(self, batch):
        return {k: v.to(self.device) for k, v in batch.items()}

    def fit(self, module, loader):
        module.trainer = self
        module.to(self.device)
        optimizer, scheduler = module.configure_optimizers()
        for self.current_epoch in range(self.max_epochs):
            module.train()
            for batch_idx, batch in enumerate(loader):  # trap: sync DataLoader iteration runs on the host
                outputs = module.training_step(self._to_device(batch), batch_idx)
                optimizer.zero_grad()
                outputs["loss"].backward()
                if self.gradient_clip_val:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.gradient_clip_val)  # trap: sync the norm stays on the device
                optimizer.step()  # trap: sync Adam step counters are host tensors
                scheduler.step()  # trap: sync scheduler bookkeeping is host-side
                self.global_step += 1
                self._call("on_train_batch_end", module, outputs, batch_idx)
            self._call("on_train_epoch_end", module)


def default_root_dir():
    return tempfile.mkdtemp(prefix="lit_planner_")
