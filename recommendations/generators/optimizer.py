"""Fused optimizers for unfused optimizer steps (NPA601): the constructor call in code, or an mmcv config."""
from __future__ import annotations

from ..catalog import load
from ..registry import fix_generator


@fix_generator("optimizers", rules=("NPA6",))
def fuse_optimizer(finding, src):
    d = finding.details
    name = d.get("optimizer")
    name = name if name in load().optimizers else None
    path, text, loc = src.located(finding)
    files = ([(path, text)] if text is not None else []) + [(p, src.text(p)) for p in src.index.files() if p != path]
    # an optimizer's qualified name ends with its class name, which the file then spells somewhere (call or
    # import): files without any of them are not parsed
    names = tuple(o.torch.rsplit(".", 1)[-1] for o in load().optimizers.values())
    for p, t in files:
        if t is None or not any(n in t for n in names):
            continue
        from ..codemods import optimizer

        try:
            calls = optimizer.find_optimizer_calls(t)
        except Exception:
            continue
        if calls:
            line = loc.line if p == path and any(l == loc.line for l, _ in calls) else None
            rewrite = optimizer.rewrite_optimizer(t, line=line, name=name)
            if rewrite is not None:
                return src.candidate(p, t, rewrite, f"optimizers.{name or calls[0][1]}")
    # mmcv / mmengine configs: optimizer = dict(type='AdamW', ...)
    for p in src.config_files():
        t = src.text(p)
        if t is None or "optimizer" not in t:
            continue
        from ..codemods import optimizer

        try:
            rewrite = optimizer.rewrite_config_optimizer(t)
        except Exception:
            continue
        if rewrite is not None:
            return src.candidate(p, t, rewrite, f"optimizers.{name or 'AdamW'}")
    return None
