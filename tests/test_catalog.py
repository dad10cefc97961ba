"""The catalog is data the rewrites rely on: its argument maps must be consistent with its signatures."""
from __future__ import annotations

import pytest

from npu_advise.errors import UserError
from npu_advise.recommendations.catalog import load
from npu_advise.rules import _RULES


def test_every_argument_map_targets_the_fused_signature():
    cat = load()
    assert {"multi_scale_deformable_attn", "bev_pool_v3", "npu_add_relu", "npu_max_pool2d", "npu_gaussian",
            "hungarian_match", "scatter", "sparse_conv3d", "deform_conv2d"} <= set(cat.fused_ops)
    for op in cat.fused_ops.values():
        assert op.module == "mx_driving" and op.constraints
        for rep in op.replaces:
            for src, dst in rep.argument_map.items():
                assert dst in op.signature, (op.key, dst)
                if rep.signature:
                    assert src in rep.signature, (op.key, src)
            assert set(rep.drop) <= set(rep.signature)
            for derived in rep.derive:
                assert derived in op.signature
            if rep.signature and rep.kind in ("function", "autograd_apply"):
                covered = set(rep.argument_map.values()) | set(rep.derive)
                assert set(op.signature) <= covered, (op.key, set(op.signature) - covered)


def test_forward_only_and_constraints_from_reference():
    cat = load()
    assert cat.fused_ops["npu_max_pool2d"].forward_only
    assert cat.fused_ops["multi_scale_deformable_attn"].limits == {
        "max_heads": 8, "max_dims": 256, "dims_multiple_of": 8, "max_levels_times_points": 64}
    assert cat.optimizers["AdamW"].replacement == "torch_npu.optim.NpuFusedAdamW"
    assert cat.fallback_for("aten::_linalg_slogdet").rewrite == "logdet_svdvals"
    assert cat.fallback_for("torch.hypot").op == "hypot"
    assert cat.env_vars["TASK_QUEUE_ENABLE"]["recommended"] == "2"
    assert cat.ref("fused_ops.npu_add_relu")["name"] == "npu_add_relu"
    with pytest.raises(UserError):
        cat.ref("fused_ops.nothing")


def test_rules_registered_once():
    import npu_advise.recommendations  # noqa: F401  (registers NPA8xx/NPA9xx)
    for code in ("NPA801", "NPA803", "NPA804", "NPA809", "NPA901", "NPA902", "NPA904", "NPA905", "NPA906"):
        assert code in _RULES
    assert "no backward" in _RULES["NPA804"].fix.lower() or "NO backward" in _RULES["NPA804"].fix
