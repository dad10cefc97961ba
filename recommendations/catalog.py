"""The recommendation catalog: what mx_driving / torch_npu offer and when a replacement is valid.

The knowledge lives in `catalog.json` (data, not code); this module loads it once and gives typed
access. A `catalog_ref` in a Fix is a dotted key into the JSON, e.g. "fused_ops.npu_add_relu".
"""
from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

from npu_advise.errors import UserError

CATALOG_PATH = Path(__file__).with_name("catalog.json")


@dataclass(frozen=True)
class Replaces:
    """One API that a fused op replaces, with how its arguments map onto the fused op's."""

    callee: str                       # e.g. "multi_scale_deformable_attn_pytorch", "MultiScaleDeformableAttnFunction*.apply"
    kind: str                         # function | autograd_apply | module | statements | loop
    signature: tuple = ()             # parameter names of the replaced API, in order
    argument_map: dict = field(default_factory=dict)   # replaced-API parameter -> fused-op parameter
    drop: tuple = ()                  # replaced-API parameters without a counterpart
    derive: dict = field(default_factory=dict)         # fused-op parameter -> expression template ({param} = fused-op arg)


@dataclass(frozen=True)
class FusedOp:
    key: str
    module: str                       # import path, e.g. "mx_driving"
    name: str
    signature: tuple
    forward_only: bool
    dtypes: tuple
    constraints: tuple
    limits: dict
    replaces: tuple                   # tuple[Replaces]

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"

    def replacing(self, callee: str) -> Optional[Replaces]:
        for r in self.replaces:
            if r.callee == callee:
                return r
        return None


@dataclass(frozen=True)
class Optimizer:
    name: str                         # torch class name, e.g. "AdamW"
    torch: str                        # "torch.optim.AdamW"
    replacement: str                  # "torch_npu.optim.NpuFusedAdamW"
    config_type: str                  # mmcv/mmengine config `type=`
    signature: tuple
    defaults: dict


@dataclass(frozen=True)
class CpuFallback:
    op: str                           # aten op without an NPU kernel, e.g. "_linalg_slogdet"
    public_api: tuple
    replacement: str
    constraints: tuple
    rewrite: Optional[str]            # name of the codemod that performs it, if any


class Catalog:
    def __init__(self, data: dict):
        self.data = data
        self.fused_ops = {k: _fused_op(k, v) for k, v in data["fused_ops"].items()}
        self.optimizers = {k: Optimizer(k, v["torch"], v["replacement"], v["config_type"],
                                        tuple(v["signature"]), dict(v.get("defaults", {})))
                           for k, v in data["optimizers"].items()}
        self.optimizer_constraints = tuple(data["optimizer_constraints"])
        self.cpu_fallbacks = {k: CpuFallback(k, tuple(v["public_api"]), v["replacement"],
                                             tuple(v.get("constraints", ())), v.get("rewrite"))
                              for k, v in data["cpu_fallbacks"].items()}
        self.env_vars = data["env_vars"]
        self.migration = data["migration"]
        self.torch_npu_features = data["torch_npu_features"]

    def ref(self, dotted: str):
        """The raw catalog entry at a dotted key ("fused_ops.npu_add_relu"); UserError if absent."""
        node = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"catalog has no entry {dotted!r}")
            node = node[part]
        return node

    def replacement_for_callee(self, text: str, fused_keys=None) -> Optional[tuple]:
        """(FusedOp, Replaces) when a call whose callee is written `text` (`name` or `Obj.attr`, see
        codemods.fused_ops.callee_text) is one the catalog maps onto a fused op with an argument map."""
        if not text:
            return None
        for key, op in self.fused_ops.items():
            if fused_keys is not None and key not in fused_keys:
                continue
            for r in op.replaces:
                if r.kind not in ("function", "autograd_apply") or not r.signature:
                    continue
                last = r.callee.rsplit(".", 1)[-1] if r.kind == "function" else r.callee
                if fnmatch.fnmatchcase(text, r.callee) or (r.kind == "function" and text.rsplit(".", 1)[-1] == last):
                    return op, r
        return None

    def replacement_tokens(self, fused_keys) -> list:
        """Names one of which a callee must contain for `replacement_for_callee(text, fused_keys)` to match:
        the longest literal piece of the last component of each catalog callee pattern."""
        out = []
        for key in fused_keys:
            for r in self.fused_ops[key].replaces:
                if r.kind not in ("function", "autograd_apply") or not r.signature:
                    continue
                last = r.callee.rsplit(".", 1)[-1] if r.kind == "function" else r.callee
                pieces = [p for p in re.split(r"\[[^\]]*\]|[*?.]", last) if p]
                out.append(max(pieces, key=len))
        return out

    def fallback_for(self, op_or_api: str) -> Optional[CpuFallback]:
        """The CPU-fallback entry for an aten op name ("aten::_linalg_slogdet") or a public API."""
        bare = op_or_api.split("::")[-1]
        if bare in self.cpu_fallbacks:
            return self.cpu_fallbacks[bare]
        for fb in self.cpu_fallbacks.values():
            if op_or_api in fb.public_api or bare in (a.rsplit(".", 1)[-1] for a in fb.public_api):
                return fb
        return None


def _fused_op(key: str, v: dict) -> FusedOp:
    replaces = tuple(
        Replaces(callee=r["callee"], kind=r["kind"], signature=tuple(r.get("signature", ())),
                 argument_map=dict(r.get("argument_map", {})), drop=tuple(r.get("drop", ())),
                 derive=dict(r.get("derive", {})))
        for r in v.get("replaces", ()))
    return FusedOp(key=key, module=v["import"], name=v["name"], signature=tuple(v.get("signature", ())),
                   forward_only=bool(v.get("forward_only", False)), dtypes=tuple(v.get("dtypes", ())),
                   constraints=tuple(v.get("constraints", ())), limits=dict(v.get("limits", {})),
                   replaces=replaces)


@lru_cache(maxsize=1)
def load() -> Catalog:
    try:
        return Catalog(json.loads(CATALOG_PATH.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot read the recommendation catalog {CATALOG_PATH}: {e}") from e
