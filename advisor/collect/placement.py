"""Where each tensor would live on the target machine, tracked while the profiler records.

On a CPU run every tensor is a CPU tensor, so `loss.item()` on a model output (a stream sync on an NPU)
looks the same as `.item()` on an optimizer's step counter or on a tensor built from numpy. This tracker,
called by `SourceMarkMode` for every torch call while recording, decides for each tensor whether it
would be on the accelerator:

- device roots: every module parameter and buffer (on the target machine the model is moved to the
  device; module parameters and buffers are taken as device tensors whether or not this run moved
  them), results of `.cuda()` / `.npu()`, of `.to(<device>)` and of factories called with an explicit
  `device=` (on a CPU run an explicit device argument expresses the intent to place the tensor on the
  accelerator), unless the call's source line names the host literally (`"cpu"`, `.cpu()`), or the
  device object was read from a host tensor (`device=host_tensor.device`);
- host: `torch.tensor` / `as_tensor` / `from_numpy` without a device, `.cpu()`, `.pin_memory()`,
  `.to("cpu")`, and every tensor the tracker never saw become a device tensor (DataLoader and collate
  outputs, tensors made before recording began such as optimizer step counters);
- propagation: a call with any device-tensor input yields device outputs; in-place calls keep their
  target's placement.

On CUDA and NPU runs the real `tensor.device` decides and nothing is tracked. Device tensors are kept in
a dict keyed by `id()` whose entries die with their tensor (weak references): nothing is kept alive.

Per call the tracker returns the flags that `SourceMarkMode` appends to its marker range name
(`npa.src:FILE:LINE:FUNC|p=d;s=1;api=item;c=optimizer;r=3`, see `flags_text`); the loader parses them
(`npu_advise.load.placement`).
"""
from __future__ import annotations

import linecache
import re
import weakref

import torch

# Sync-prone reads: calls that need a tensor's value on the host. Value: which arguments are the source.
#   "self": the first argument; "any": every tensor argument; special handling by name otherwise.
_READS = {
    "item": "self", "tolist": "self", "__bool__": "self", "__int__": "self", "__float__": "self",
    "__index__": "self", "__complex__": "self", "__format__": "self", "__repr__": "self", "__str__": "self",
    "__array__": "self", "numpy": "self", "cpu": "self", "nonzero": "self", "argwhere": "self",
    "masked_select": "any", "unique": "self", "unique_consecutive": "self", "_unique": "self",
    "_unique2": "self", "bincount": "self", "equal": "any", "allclose": "any",
    "repeat_interleave": "repeats", "__getitem__": "index", "__setitem__": "index", "to": "to", "where": "where",
}
# Writes through a mask: no host read, never a sync.
_MASK_WRITES = {"masked_fill", "masked_fill_", "masked_scatter", "masked_scatter_"}
_HOST_RESULTS = {"cpu", "pin_memory", "numpy", "tolist", "item"}
_DEVICE_RESULTS = {"cuda", "npu"}
_PLACING = {"to", "cuda", "npu"}
_HOST_FACTORIES = {"tensor", "from_numpy", "as_tensor", "asarray", "frombuffer"}
# Library code that belongs to a torch component, by path fragment: its calls are the component's work
# (NPA601 for the optimizer), never the user line that called it.
_COMPONENTS = (
    ("/torch/optim/lr_scheduler.py", "scheduler"), ("/torch/optim/", "optimizer"),
    ("/torch_npu/optim/", "optimizer"), ("/torch/amp/grad_scaler.py", "grad_scaler"),
    ("/torch/cuda/amp/", "grad_scaler"), ("/torch_npu/npu/amp/", "grad_scaler"),
    ("/torch/utils/data/", "data_loader"), ("/torch/nn/utils/clip_grad.py", "clip_grad"),
)
ROOT_PREFIX = "npa.root:"
_HOST_LITERAL = re.compile(r"""["']cpu["']|\.cpu\(""")


def component_of(path: str):
    """The torch component a library file belongs to ("optimizer", "grad_scaler", ...), or None."""
    p = path.replace("\\", "/")
    for fragment, name in _COMPONENTS:
        if fragment in p:
            return name
    return None


def flags_text(on_device: bool, sync, api, component, root) -> str:
    """The marker suffix: `p=d|h`, then `s=` (1 device read: a sync on the NPU, 0 host read: none,
    2 mask write: never), `api=` (what was called), `c=` (torch component), `r=` (device root index)."""
    parts = ["p=d" if on_device else "p=h"]
    if sync is not None:
        parts.append(f"s={sync};api={api}")
    if component:
        parts.append(f"c={component}")
    if root is not None:
        parts.append(f"r={root}")
    return ";".join(parts)


def _func_name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":     # a Tensor property (`.device`, `.grad`, `.T`)
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _tensors(args, kwargs):
    """Tensor arguments, one level into lists/tuples (torch.cat / stack take a sequence)."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, torch.Tensor))
    if kwargs:
        for a in kwargs.values():
            if isinstance(a, torch.Tensor):
                out.append(a)
    return out


def _index_tensors(index):
    """(mask tensors, slice-bound tensors) in a __getitem__/__setitem__ index."""
    items = index if isinstance(index, tuple) else (index,)
    masks, bounds = [], []
    for i in items:
        if isinstance(i, torch.Tensor):
            if i.dtype in (torch.bool, torch.uint8):
                masks.append(i)
        elif isinstance(i, slice):
            bounds.extend(b for b in (i.start, i.stop, i.step) if isinstance(b, torch.Tensor))
    return masks, bounds


def shown_root(read_root, root, out):
    """The root a call's flags name: the read tensor's for a sync-prone read, else an input's or the
    output's."""
    if read_root is not None:
        return read_root
    return root if root is not None else out


class Placement:
    """The tracker. `before(func, args, kwargs, site)` classifies one call (before it runs: the marker
    name must be known) and returns (flags, output rule); `after(result, rule)` records its outputs."""

    def __init__(self, inferred: bool = True, device_type: str = "cpu"):
        self.inferred = inferred          # False on CUDA/NPU runs: the real tensor.device decides
        self.device_type = device_type
        self.roots: list = []             # root descriptions; flags carry their index
        self._priority: list = []         # per root
        self._root_index: dict = {}
        self._device: dict = {}           # id(tensor) -> (weak ref, root index) for device tensors
        self._host_devices: dict = {}     # id(torch.device) -> the object, for devices read from host tensors
        self._names: dict = {}            # func -> name
        self._host_literal: dict = {}     # (file, line) -> the line names the host literally
        self._seen_modules = weakref.WeakSet()
        self._hook = None
        self.error = None                 # set when tracking failed and was switched off
        if not inferred:
            self._real_root = self.root(f"tensor.device on this {device_type} run (measured)")

    # -- registry ---------------------------------------------------------------------------
    def root(self, description: str, priority: int = 1) -> int:
        """The index of a root; a call with several device inputs names the one of lowest priority
        (module parameters first: "derived from `BEVHead`'s parameters" says most)."""
        i = self._root_index.get(description)
        if i is None:
            i = self._root_index[description] = len(self.roots)
            self.roots.append(description)
            self._priority.append(priority)
            self._announce(i)
        return i

    def _announce(self, i: int):
        """Into the trace itself (metadata is written before recording starts): an empty range
        `npa.root:N:DESCRIPTION`, read back by the loader."""
        with torch._C._profiler._RecordFunctionFast(f"{ROOT_PREFIX}{i}:{self.roots[i]}"):
            pass

    def announce_all(self):
        """Once recording begins: the roots found during the (unrecorded) warmup step."""
        for i in range(len(self.roots)):
            self._announce(i)

    def _drop(self, ref):
        self._device.pop(ref.key, None)

    def mark(self, t, root: int, replace: bool = False):
        entry = self._device.get(id(t))
        if entry is not None and entry[0]() is t and not replace:
            return
        self._device[id(t)] = (weakref.KeyedRef(t, self._drop, id(t)), root)

    def root_of(self, t):
        """The device root index of a tensor, or None for a host tensor."""
        if not self.inferred:
            return self._real_root if t.device.type != "cpu" else None
        entry = self._device.get(id(t))
        if entry is not None and entry[0]() is t:
            return entry[1]
        if isinstance(t, torch.nn.Parameter):
            r = self.root("a module parameter (every module's parameters and buffers are device tensors)", 2)
            self.mark(t, r)
            return r
        return None

    # -- module parameters and buffers -----------------------------------------------------
    def start(self):
        """While recording: a global module pre-hook marks each called module's parameters and buffers."""
        if self.inferred and self._hook is None:
            from torch.nn.modules.module import register_module_forward_pre_hook
            self._hook = register_module_forward_pre_hook(self._on_module)

    def stop(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_module(self, module, args):
        """The first call of the outermost module names all its parameters and buffers (submodules
        included): `pred` then derives from "`BEVHead`'s parameters", not from one `Linear`'s."""
        if module in self._seen_modules:
            return None
        r = None
        for sub in module.modules():
            if sub in self._seen_modules:
                continue
            self._seen_modules.add(sub)
            for t in list(sub._parameters.values()) + list(sub._buffers.values()):
                if isinstance(t, torch.Tensor):
                    if r is None:
                        r = self.root(f"the parameters and buffers of `{type(module).__name__}` (every module's "
                                      "parameters and buffers are device tensors)", 0)
                    self.mark(t, r, replace=True)
        return None

    # -- per call ---------------------------------------------------------------------------
    def places(self, func, kwargs) -> bool:
        """Whether a call places a tensor explicitly (`.to(...)`, `.cuda()`, `.npu()`, `device=`): these are
        tracked from the script's start, so tensors made at start-up (anchors) keep their placement; one
        dictionary lookup per torch call outside tracking."""
        return bool(kwargs and "device" in kwargs) or self._name(func) in _PLACING
    def _name(self, func) -> str:
        try:
            name = self._names.get(func)
        except TypeError:
            return _func_name(func)
        if name is None:
            name = self._names[func] = _func_name(func)
        return name

    def _names_host(self, frame) -> bool:
        """Whether the frame's current source line names the host literally."""
        key = (frame.f_code, frame.f_lineno)
        hit = self._host_literal.get(key)
        if hit is None:
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
            hit = self._host_literal[key] = bool(_HOST_LITERAL.search(line))
        return hit

    def _device_arg(self, dev, site, caller, what: str):
        """Root index for an explicit device argument, or None when it names the host."""
        if isinstance(dev, torch.Tensor):
            return self.root_of(dev)
        if isinstance(dev, int) and not isinstance(dev, bool):
            kind = "cuda"
        elif isinstance(dev, str):
            kind = dev.split(":", 1)[0]
        elif isinstance(dev, torch.device):
            if id(dev) in self._host_devices:
                return None
            kind = dev.type
        else:
            return None
        if kind == "meta":
            return None
        if not self.inferred:
            return self._real_root if kind != "cpu" else None
        # "cpu" is the host only when the calling line says so (`.to("cpu")`, AdamW's `device="cpu"` step
        # counters); `.to(device)` with device = cpu on this run is the intent to use the accelerator.
        if kind == "cpu" and self._names_host(caller):
            return None
        return self.root(f"{what} at {site[2]}:{site[1]}")

    def before(self, func, args, kwargs, site, caller):
        """(flags text, output rule) for one call. `site` = (file, line, file name, component, direct):
        direct is False when library code between the user line and this call made it; caller: the
        calling frame."""
        name = self._name(func)
        tensors = _tensors(args, kwargs)
        root = None
        for t in tensors:
            r = self.root_of(t)
            if r is not None and (root is None or self._priority[r] < self._priority[root]):
                root = r
        on_device = root is not None
        out = root                         # default: propagation
        sync = api = None
        self_t = args[0] if args and isinstance(args[0], torch.Tensor) else None

        if name == "device" and self_t is not None:
            # `x.device` of a host tensor: a factory given it places its result on the host
            if root is None:
                if len(self._host_devices) > 4096:
                    self._host_devices.clear()
                return flags_text(False, None, None, None, None), ("host_device", None, None)
            return flags_text(True, None, None, None, root), None
        if kwargs and "device" in kwargs and name not in ("to",):
            out = self._device_arg(kwargs["device"], site, caller, f"`{name}(..., device=...)`")
            on_device = on_device or out is not None
        elif name in _HOST_FACTORIES and not (name in ("as_tensor", "asarray") and self_t is not None):
            out = None
        elif name in _DEVICE_RESULTS and self_t is not None:
            out = self.root(f"`.{name}()` at {site[2]}:{site[1]}") if self.inferred else self._real_root
            on_device = True
        elif name == "to" and self_t is not None:
            out = self._to_target(args, kwargs, site, caller, root)
            on_device = on_device or out is not None

        src = _READS.get(name)
        read_root = None
        if src is not None:
            sync, api, read_root = self._read(name, src, args, kwargs, tensors, out)
        elif name in _MASK_WRITES:
            sync, api = 2, name
        elif name == "copy_" and self_t is not None and self.root_of(self_t) is None and on_device:
            sync, api, read_root = 1, "copy_ (device -> host)", root
        if name in _HOST_RESULTS or (name == "to" and out is None):
            out = None
            if root is not None and self.inferred:
                return flags_text(on_device, sync, api, site[3], shown_root(read_root, root, out)), \
                    ("to_host", None, self_t)
        kind = "place" if out is not None and out != root else "out"
        return flags_text(on_device, sync, api, site[3], shown_root(read_root, root, out)), (kind, out, self_t)

    def _to_target(self, args, kwargs, site, caller, self_root):
        dev = kwargs.get("device") if kwargs else None
        if dev is None:
            for a in args[1:]:
                if isinstance(a, (str, int, torch.device, torch.Tensor)) and not isinstance(a, bool):
                    dev = a
                    break
        if dev is None:
            return self_root                 # .to(dtype) and friends
        return self._device_arg(dev, site, caller, "`.to(device)`")

    def _read(self, name, src, args, kwargs, tensors, out):
        """(sync code, api, root of the device source) of a sync-prone call; (None, None, None) when
        this call reads nothing."""
        if src == "self":
            sources = tensors[:1]
        elif src == "any":
            sources = tensors
        elif src == "repeats":
            if kwargs and kwargs.get("output_size") is not None:
                return None, None, None
            rep = kwargs.get("repeats") if kwargs else None
            if rep is None and len(args) > 1:
                rep = args[1]
            sources = [rep] if isinstance(rep, torch.Tensor) else []
            if not sources:
                return None, None, None
        elif src == "where":
            if len(args) != 1 or kwargs:
                return None, None, None           # torch.where(cond, a, b): no host read
            sources = tensors[:1]
        elif src == "to":
            if not tensors or out is not None or self.root_of(tensors[0]) is None:
                return None, None, None            # .to(dtype) / .to(device): no read unless device -> host
            sources = tensors[:1]
            name = "to(cpu)"
        else:   # __getitem__ / __setitem__: a boolean mask read, or a 0-d tensor as a slice bound
            if len(args) < 2:
                return None, None, None
            masks, bounds = _index_tensors(args[1])
            if name == "__setitem__":
                if bounds:
                    sources, name = bounds, "slice bound (__index__)"
                elif masks:
                    return 2, "x[mask] = v", None
                else:
                    return None, None, None
            elif masks:
                sources, name = masks, "x[mask]"
            elif bounds:
                sources, name = bounds, "slice bound (__index__)"
            else:
                return None, None, None
        for t in sources:
            r = self.root_of(t)
            if r is not None:
                return 1, name, r
        return (0, name, None) if sources else (None, None, None)

    def after(self, result, rule):
        """Record a call's outputs; returns the result the caller gets (see "to_host")."""
        if rule is None:
            return result
        kind, root, self_t = rule
        if kind == "to_host":
            # On a CPU run `.cpu()` / `.to("cpu")` of a CPU tensor returns the tensor itself, which stays
            # a device tensor here; the caller gets an alias instead (a view: same data, autograd intact,
            # not a leaf, as the copy on a real device would be), which is a host tensor.
            if result is self_t and isinstance(result, torch.Tensor) and result.layout == torch.strided:
                return result.view_as(result)
            return result
        if kind == "host_device":
            if isinstance(result, torch.device):
                self._host_devices[id(result)] = result
            return result
        if root is None or not self.inferred or (result is self_t and kind != "place"):
            # host outputs are not registered; an in-place call keeps its target's placement, but
            # `.to(device)` of a CPU tensor on a CPU run returns the tensor itself: it is placed now
            return result
        if isinstance(result, torch.Tensor):
            self.mark(result, root)
        elif isinstance(result, (tuple, list)):
            for r in result:
                if isinstance(r, torch.Tensor):
                    self.mark(r, root)
        return result

    def failed(self, exc: BaseException):
        self.error = f"{type(exc).__name__}: {exc}"
        self.stop()

    def summary(self) -> dict:
        """What goes into the trace metadata (written before recording; the roots go into the trace as
        `npa.root:` ranges)."""
        return {"recorded": self.error is None, "inferred": self.inferred, "device_type": self.device_type,
                "error": self.error}
