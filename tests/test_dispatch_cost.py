"""The NPU dispatch-cost model: re-derived from the real torch_npu profiles, it equals the data file."""
from __future__ import annotations

import importlib.util
import json

from conftest import REPO


def _derive_module():
    spec = importlib.util.spec_from_file_location("derive_dispatch_cost", REPO / "benchmarks" / "derive_dispatch_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_data_file_is_reproducible_from_shared_data(shared_data):
    stored = json.loads((REPO / "analyzers" / "npu_dispatch_cost.json").read_text(encoding="utf-8"))
    assert _derive_module().derive(shared_data) == stored


def test_model_families_and_evidence(shared_data):
    from npu_advise.analyzers import dispatch_cost
    data = dispatch_cost.model()
    # every torch_npu profile under npu/ counted, each with its sample count
    assert len(data["sources"]) == 7 and all(s["top_level_aten_ops"] > 0 for s in data["sources"])
    fams = data["families"]
    assert sum(f["samples"] for f in fams.values()) == data["all_ops"]["samples"]
    for f in fams.values():
        assert f["p25_us"] <= f["median_us"] <= f["p75_us"] and f["samples"] == sum(f["by_source"].values())
    assert dispatch_cost.family_of("aten::add_") == "elementwise"
    assert dispatch_cost.family_of("aten::item") == "sync"
    assert dispatch_cost.family_of("aten::index_put_") == "indexing"
    assert dispatch_cost.family_of("aten::some_new_op") == "other"
    total, how = dispatch_cost.launches(["aten::mul"] * 30 + ["aten::index"] * 10, per_step=2)
    # a family without samples in the profiles costs the median over all ops
    indexing = fams["indexing"]["median_us"] if "indexing" in fams else data["all_ops"]["median_us"]
    assert total == (15 * fams["elementwise"]["median_us"] + 5 * indexing)
    assert how.startswith("on an NPU: ~20 launches/step") and "median of" in how
