"""torch.optim -> torch_npu.optim.NpuFused* in code (qualified names) and in mmcv configs."""
from __future__ import annotations

import libcst as cst
import pytest

from _codemod_helpers import git_apply_check, line_of
from npu_advise.recommendations.catalog import load
from npu_advise.recommendations.codemods import optimizer
from npu_advise.recommendations.codemods.diffs import to_fix

VARIANTS = {
    "dotted": ("import torch\n\n\ndef build(model, args):\n"
               "    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)\n    return optimizer\n"),
    "from_import": ("import torch\nfrom torch.optim import AdamW\n\n\ndef build(model, args):\n"
                    "    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)\n    return optimizer\n"),
    "module_alias": ("import torch\nimport torch.optim as optim\n\n\ndef build(model, args):\n"
                     "    optimizer = optim.AdamW(model.parameters(), lr=args.lr)\n    return optimizer\n"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_adamw_variants_resolve_by_qualified_name(tmp_path, variant):
    src = VARIANTS[variant]
    r = optimizer.rewrite_optimizer(src, line=line_of(src, "AdamW("))
    assert r is not None and r.auto_applicable and r.requires == ["torch_npu"]
    assert "torch_npu.optim.NpuFusedAdamW(model.parameters(), lr=args.lr" in r.new_source
    assert "import torch_npu\n" in r.new_source
    git_apply_check(tmp_path, "tools/train.py", src, to_fix("tools/train.py", src, r, "NPA601-x", "optimizers.AdamW").diff)
    assert optimizer.rewrite_optimizer(r.new_source) is None            # idempotent: nothing left to replace


def test_adam_and_sgd_and_unsupported_kwargs():
    src = ("import torch\n\n\ndef build(p):\n    a = torch.optim.Adam(p, lr=1e-3)\n"
           "    b = torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=True)\n    return a, b\n")
    ra = optimizer.rewrite_optimizer(src, line=5)
    assert "torch_npu.optim.NpuFusedAdam(p, lr=1e-3)" in ra.new_source and ra.auto_applicable
    rb = optimizer.rewrite_optimizer(src, line=6)
    assert "torch_npu.optim.NpuFusedSGD(p, lr=0.1, momentum=0.9, foreach=True)" in rb.new_source
    assert not rb.auto_applicable and "foreach" in rb.constraints[0]


def test_replacement_keywords_are_parameters_of_the_fused_optimizer():
    src = VARIANTS["from_import"]
    r = optimizer.rewrite_optimizer(src)
    call = next(n for n in cst.parse_module(r.new_source).body[-1].body.body[0].body[0].value.args)
    tree = cst.parse_module(r.new_source)
    calls = [n for n in _walk(tree) if isinstance(n, cst.Call) and "NpuFusedAdamW" in tree.code_for_node(n.func)]
    assert len(calls) == 1
    sig = load().optimizers["AdamW"].signature
    assert all(a.keyword is None or a.keyword.value in sig for a in calls[0].args)
    assert call is not None


def _walk(node):
    yield node
    for c in node.children:
        yield from _walk(c)


# BEVDet configs/bevdet/bevdet-r50.py (seed chapter 3.2.4) and an mmengine optim_wrapper.
CONFIG = '''_base_ = ['../_base_/datasets/nus-3d.py', '../_base_/default_runtime.py']
point_cloud_range = [-51.2, -51.2, -5.0, 51.2, 51.2, 3.0]
optimizer = dict(type='AdamW', lr=2e-4, weight_decay=1e-07)
optimizer_config = dict(grad_clip=dict(max_norm=5, norm_type=2))
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-4))
'''


def test_config_dict_rewrite(tmp_path):
    assert [n for _, n in optimizer.find_config_optimizers(CONFIG)] == ["AdamW", "AdamW"]
    r = optimizer.rewrite_config_optimizer(CONFIG)
    assert "optimizer = dict(type='NpuFusedAdamW', lr=2e-4, weight_decay=1e-07)" in r.new_source
    assert 'optimizer=dict(type="NpuFusedAdamW", lr=2e-4)' in r.new_source
    assert 'dict(type="OptimWrapper"' in r.new_source                   # the wrapper type is untouched
    git_apply_check(tmp_path, "configs/bevdet/bevdet-r50.py", CONFIG,
                    to_fix("configs/bevdet/bevdet-r50.py", CONFIG, r, "x", "optimizers.AdamW").diff)
    assert optimizer.rewrite_config_optimizer(r.new_source) is None
