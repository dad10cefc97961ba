"""The host-op tree (`ops.depth`, `ops.parent`) computed once by the loaders, on real traces."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA
from npu_advise import model
from npu_advise.load import load_profile

TRACES = [SHARED_DATA / "kineto" / "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz",
          SHARED_DATA / "npu" / "alexnet_2rank_text" / "level1"]


@pytest.mark.parametrize("path", TRACES, ids=lambda p: p.name)
def test_parent_column_is_the_enclosing_op_on_the_same_thread(path):
    trace = load_profile(path)[0]
    ops = trace.ops
    assert ops["parent"].dtype == np.int64
    parent = ops["parent"].to_numpy()
    depth = ops["depth"].to_numpy()
    ts, end, tid = ops["ts"].to_numpy(), (ops["ts"] + ops["dur"]).to_numpy(), ops["tid"].to_numpy()
    has = parent >= 0
    assert has.any() and (depth[~has] == 0).all() and (depth[has] == depth[parent[has]] + 1).all()
    p = parent[has]
    assert (tid[p] == tid[has]).all() and (ts[p] <= ts[has]).all() and (end[p] >= end[has]).all()
    # the same tree as computing it afresh (what the analyzers did per analysis before)
    d2, p2 = model.nesting(ts, end, model.thread_key(ops["pid"].to_numpy(), tid))
    assert (d2 == depth).all() and (p2 == parent).all()


def test_a_row_subset_gets_its_own_tree():
    ops = load_profile(TRACES[0])[0].ops
    sub = ops[ops["depth"] > 0]          # parents point into the whole table: not reusable here
    depth, parent = model.op_tree(sub)
    assert len(parent) == len(sub) and parent.max() < len(sub) and (depth == 0).any()
