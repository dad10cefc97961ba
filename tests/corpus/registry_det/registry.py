"""A minimal mmengine-style registry: classes register under a name, configs name them by `type`."""
import torch


class Registry:
    def __init__(self, name):
        self.name = name
        self._modules = {}

    def register_module(self, cls=None, name=None):
        def _register(c):
            self._modules[name or c.__name__] = c
            return c
        return _register(cls) if cls is not None else _register

    def get(self, key):
        if key not in self._modules:
            raise KeyError(f"{key} is not registered in {self.name}: {sorted(self._modules)}")
        return self._modules[key]

    def build(self, cfg, **default_args):
        args = dict(cfg)
        obj_cls = self.get(args.pop("type"))
        for key, value in default_args.items():
            args.setdefault(key, value)
        return obj_cls(**args)


MODELS = Registry("model")
LOSSES = Registry("loss")
OPTIMIZERS = Registry("optimizer")
for _name in ("SGD", "Adam", "AdamW"):  # trap: small_op_loop three registrations at import time
    OPTIMIZERS.register_module(getattr(torch.optim, _name), name=_name)
