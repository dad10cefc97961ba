"""Inside the verification run: clone a call's arguments, hold the RNG still, and compare two results.

Comparison is structural (tensors, tuples, lists, dicts, scalars, None); floating tensors are compared
with per-dtype tolerances (`TOLERANCES`, torch.testing's defaults loosened for float32 to the rounding a
reordered reduction causes), everything else exactly. Each comparison returns the largest absolute
difference seen per floating dtype, so the report can say how close "equal" was.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Optional

import torch

# dtype -> (rtol, atol): |a - b| <= atol + rtol * |b| elementwise.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.complex64: (1e-5, 1e-5),
    torch.complex128: (1e-7, 1e-7),
}
PY_FLOAT = (1e-5, 1e-8)        # Python floats: usually a float32 tensor's .item()


def tolerance(dtype) -> tuple:
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


@dataclass
class Comparison:
    equal: bool = True
    why: Optional[str] = None                  # the first difference, when not equal
    max_abs: dict = field(default_factory=dict)   # dtype name -> largest |a - b| over floating values
    tensors: int = 0

    def fail(self, where: str, what: str) -> None:
        if self.equal:
            self.equal, self.why = False, f"{where}: {what}" if where else what

    def note(self, dtype: str, diff: float) -> None:
        self.max_abs[dtype] = max(self.max_abs.get(dtype, 0.0), diff)


def compare(expected, actual, where: str = "", out: Optional[Comparison] = None) -> Comparison:
    """Whether `actual` (the candidate's) matches `expected` (the original's), structurally."""
    out = out if out is not None else Comparison()
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            out.fail(where, f"a tensor became {type(actual).__name__}")
        else:
            _compare_tensors(expected, actual, where, out)
    elif isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or type(expected) is not type(actual):
            out.fail(where, f"{type(expected).__name__} became {type(actual).__name__}")
        elif len(expected) != len(actual):
            out.fail(where, f"length {len(expected)} became {len(actual)}")
        else:
            for i, (e, a) in enumerate(zip(expected, actual)):
                compare(e, a, f"{where}[{i}]", out)
    elif isinstance(expected, dict):
        if not isinstance(actual, dict) or set(expected) != set(actual):
            out.fail(where, "dict keys differ" if isinstance(actual, dict) else f"dict became {type(actual).__name__}")
        else:
            for k in expected:
                compare(expected[k], actual[k], f"{where}[{k!r}]", out)
    elif isinstance(expected, float) and isinstance(actual, (float, int)) and not isinstance(actual, bool):
        rtol, atol = PY_FLOAT
        if not (math.isclose(expected, actual, rel_tol=rtol, abs_tol=atol)
                or (math.isnan(expected) and math.isnan(actual))):
            out.fail(where, f"{actual!r} instead of {expected!r}")
        elif math.isfinite(expected):
            out.note("float", abs(expected - actual))
    elif expected is None or isinstance(expected, (bool, int, str, bytes, torch.dtype, torch.device, torch.Size)):
        if type(expected) is not type(actual) or expected != actual:
            out.fail(where, f"{_short(actual)} instead of {_short(expected)}")
    elif expected is not actual:
        # An object neither side created afresh (a module, a config) is the same object or not comparable.
        out.fail(where, f"cannot compare values of type {type(expected).__name__}")
    return out


def _compare_tensors(e: torch.Tensor, a: torch.Tensor, where: str, out: Comparison) -> None:
    out.tensors += 1
    if e.shape != a.shape:
        return out.fail(where, f"shape {tuple(a.shape)} instead of {tuple(e.shape)}")
    if e.dtype != a.dtype:
        return out.fail(where, f"dtype {a.dtype} instead of {e.dtype}".replace("torch.", ""))
    if e.device != a.device:
        return out.fail(where, f"device {a.device} instead of {e.device}")
    e, a = e.detach(), a.detach()
    if e.is_floating_point() or e.is_complex():
        if e.numel() == 0:
            return
        rtol, atol = tolerance(e.dtype)
        e64, a64 = e.to(torch.complex128 if e.is_complex() else torch.float64), a.to(torch.complex128 if e.is_complex() else torch.float64)
        both_nan = torch.isnan(e64) & torch.isnan(a64)
        diff = (e64 - a64).abs().masked_fill(both_nan, 0)
        same_inf = (e64 == a64)             # equal infinities give nan differences
        diff = torch.where(same_inf, torch.zeros_like(diff), diff)
        bad = ~((diff <= atol + rtol * e64.abs()) | both_nan | same_inf)
        worst = float(diff.max()) if diff.numel() else 0.0
        if bool(bad.any()):
            k = int(bad.flatten().nonzero()[0])
            return out.fail(where, f"differs by {_num(float(diff.flatten()[k]))} at flat index {k} "
                                   f"({_num(float(a64.flatten()[k].real))} instead of {_num(float(e64.flatten()[k].real))}; "
                                   f"{str(e.dtype).replace('torch.', '')} tolerance rtol {rtol:g}, atol {atol:g})")
        out.note(str(e.dtype).replace("torch.", ""), worst)
    elif not torch.equal(e, a):
        k = int((e != a).flatten().nonzero()[0])
        out.fail(where, f"{a.flatten()[k].item()!r} instead of {e.flatten()[k].item()!r} at flat index {k}")


def _num(x: float) -> str:
    return f"{x:.3g}"


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------------------------------------
# Arguments and random state
# ---------------------------------------------------------------------------------------------
def clone(value, memo: Optional[dict] = None):
    """Tensors cloned (a leaf that requires grad again where the original required it, so gradients
    can be taken with respect to it), generators copied, containers rebuilt; other objects shared."""
    memo = {} if memo is None else memo
    key = id(value)
    if key in memo:
        return memo[key]
    if isinstance(value, torch.Tensor):
        c = value.detach().clone()
        if value.requires_grad and (c.is_floating_point() or c.is_complex()):
            c.requires_grad_(True)
        out = c
    elif isinstance(value, torch.Generator):
        out = torch.Generator(device=value.device)
        out.set_state(value.get_state())
    elif isinstance(value, tuple) and hasattr(value, "_fields"):
        out = type(value)(*(clone(v, memo) for v in value))
    elif isinstance(value, (tuple, list)):
        out = type(value)(clone(v, memo) for v in value)
    elif isinstance(value, dict):
        out = type(value)((k, clone(v, memo)) for k, v in value.items())
    else:
        out = value
    memo[key] = out
    return out


def tensors_in(value, found: Optional[list] = None) -> list:
    """Tensors of a nested structure, in a fixed order (for matching a value with its clone)."""
    found = [] if found is None else found
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            tensors_in(v, found)
    elif isinstance(value, dict):
        for v in value.values():
            tensors_in(v, found)
    return found


def modules_in(value) -> list:
    """nn.Modules passed as arguments (`self` of a method): their parameters get gradients compared."""
    out = []
    for v in (value if isinstance(value, (tuple, list)) else [value]):
        if isinstance(v, torch.nn.Module):
            out.append(v)
    return out


class RandomState:
    """The state of every random stream a candidate may draw from, to draw the same numbers twice."""

    def __init__(self):
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        self.python = random.getstate()
        import sys
        np = sys.modules.get("numpy")
        self.numpy = np.random.get_state() if np is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        if self.numpy is not None:
            import sys
            sys.modules["numpy"].random.set_state(self.numpy)


class BufferState:
    """Values of the buffers of the modules among a call's arguments (BatchNorm running statistics):
    a rewrite run beside the original must neither update them a second time nor update them differently."""

    def __init__(self, modules: list):
        seen, self.saved = set(), []
        for m in modules:
            for b in m.buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    self.saved.append((b, b.detach().clone()))

    def values(self) -> list:
        return [v for _, v in self.saved]

    def current(self) -> list:
        return [b.detach() for b, _ in self.saved]

    def restore(self) -> None:
        # Through .data: the write must not bump the buffer's version counter, which autograd checks for
        # the script's own backward (batch norm saves its running statistics for it).
        for b, v in self.saved:
            b.data.copy_(v)
