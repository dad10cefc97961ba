"""`npu-advise check`: the static scan, through the real CLI, on the real BEVFormer source and on small
scripts written here; the NPU-arm codemod (NPA907) and the detectors on their own."""
from __future__ import annotations

import ast
import json
import textwrap

import pytest

from conftest import REPO, SHARED_DATA, run_cli

BEVFORMER = SHARED_DATA / "src" / "bevformer"
MODULES = "projects/mmdet3d_plugin/bevformer/modules"
# Where BEVFormer's three attention modules branch on CUDA (line of the `if`, line of the pytorch call).
BEV_DISPATCHES = {f"{MODULES}/decoder.py": (325, 336), f"{MODULES}/spatial_cross_attention.py": (385, 394),
                  f"{MODULES}/temporal_self_attention.py": (240, 252)}

needs_bevformer = pytest.mark.skipif(not BEVFORMER.is_dir(), reason="BEVFormer source not in ../shared/data")


def _lines(stdout: str) -> list:
    return [l for l in stdout.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("check-cache")


@pytest.fixture(scope="module")
def bev_json(cache_dir):
    r = run_cli("check", "--format", "json", "--cache-dir", cache_dir, ".", cwd=BEVFORMER)
    assert r.returncode == 1, r.stderr
    return json.loads(r.stdout)


@needs_bevformer
def test_bevformer_reports_the_three_msda_dispatches_with_an_npu_arm(bev_json):
    by_file = {}
    for f in bev_json["findings"]:
        by_file.setdefault(f["locations"][0]["file"], []).append(f)
    for path, (if_line, other_line) in BEV_DISPATCHES.items():
        (d,) = [f for f in by_file[path] if f["rule"] == "NPA907"]
        assert d["locations"][0]["line"] == if_line and d["severity"] == "high"
        assert d["details"]["other_line"] == other_line
        assert d["details"]["fused_op"] == "mx_driving.multi_scale_deformable_attn"
        assert '+        if value.device.type == "npu":\r\n' in d["fix"]["diff"]     # the file's CRLF kept
        diff = d["fix"]["diff"].replace("\r\n", "\n")
        assert f"+++ b/{path}" in diff and "+import mx_driving" in diff
        assert ('+        if value.device.type == "npu":\n'
                "+            output = mx_driving.multi_scale_deformable_attn(value, spatial_shapes, level_start_index, "
                "sampling_locations, attention_weights)\n"
                "+        elif torch.cuda.is_available() and value.is_cuda:") in diff
        assert "im2col_step" not in diff.split("+        elif")[0].split("@@")[-1]
        assert not d["fix"]["auto_applicable"]          # no shapes seen: heads/levels/points unverified
        assert "verified: dropped: im2col_step" in d["fix"]["constraints"]
        # inside the branch one MSDA finding, at the call an NPU runs, without a diff of its own: the NPU arm is it
        (msda,) = [f for f in by_file[path] if f["rule"] == "NPA801"]
        assert msda["locations"][0]["line"] == other_line and msda["fix"]["diff"] is None
        assert msda["details"]["dispatch_line"] == if_line and f"branch at line {if_line}, NPA907" in msda["title"]


@needs_bevformer
def test_bevformer_findings_are_the_expected_ones_and_nothing_else(bev_json):
    got = {(f["rule"], f["locations"][0]["file"].rsplit("/", 1)[-1], f["locations"][0]["line"])
           for f in bev_json["findings"] if f["rule"] != "NPA602"}
    assert got == {
        ("NPA907", "decoder.py", 325), ("NPA907", "spatial_cross_attention.py", 385),
        ("NPA907", "temporal_self_attention.py", 240),
        ("NPA801", "decoder.py", 336), ("NPA801", "spatial_cross_attention.py", 394),
        ("NPA801", "temporal_self_attention.py", 252),
        # mmcv `_ext` MSDA ops loaded at import time (mx_driving.multi_scale_deformable_attn replaces them)
        ("NPA908", "decoder.py", 30), ("NPA908", "encoder.py", 20), ("NPA908", "spatial_cross_attention.py", 27),
        ("NPA908", "temporal_self_attention.py", 21), ("NPA908", "multi_scale_deformable_attn_function.py", 11),
        ("NPA903", "mmdet_train.py", 75),                     # MMDistributedDataParallel
        ("NPA809", "hungarian_assigner_3d.py", 123),          # linear_sum_assignment on cost.detach().cpu()
        # .cuda() / torch.cuda.synchronize() without transfer_to_npu anywhere in the checked files
        ("NPA909", "mmdet_train.py", 76), ("NPA909", "nuscenes_mono_dataset.py", 769),
        ("NPA909", "bricks.py", 10), ("NPA909", "grid_mask.py", 114)}
    # dd3d's `if device.type == "cuda" ...: torch.cuda.current_device()` runs only on CUDA: not a blocker
    assert not [f for f in bev_json["findings"] if f["locations"][0]["file"].endswith("transform3d.py")]
    unused = {f["locations"][0]["file"].rsplit("/", 1)[-1]: f["details"]["used"]
              for f in bev_json["findings"] if f["rule"] == "NPA908"}
    assert unused["multi_scale_deformable_attn_function.py"] is True and unused["decoder.py"] is False
    configs = [f for f in bev_json["findings"] if f["rule"] == "NPA602"]
    assert configs and all(f["severity"] == "info" and f["locations"][0]["file"].startswith("projects/configs/")
                           for f in configs)
    tiny = next(f for f in configs if f["locations"][0]["file"].endswith("bevformer/bevformer_tiny.py"))
    diff = tiny["fix"]["diff"].replace("\r\n", "\n")
    assert "-    type='AdamW',\n" in diff and "+    type='NpuFusedAdamW',\n" in diff


@needs_bevformer
def test_bevformer_text_output_select_ignore_fail_on_and_cache(cache_dir):
    r = run_cli("check", "--select", "NPA907", "--cache-dir", cache_dir, ".", cwd=BEVFORMER)
    assert r.returncode == 1
    lines = _lines(r.stdout)
    assert [l.split(": NPA")[0] for l in lines] == [
        f"{MODULES}/decoder.py:325:9", f"{MODULES}/spatial_cross_attention.py:385:9",
        f"{MODULES}/temporal_self_attention.py:240:9"]
    assert all("on an NPU the branch runs `multi_scale_deformable_attn_pytorch(" in l for l in lines)
    assert "150 files" in r.stderr
    again = run_cli("check", "--select", "NPA907", "--cache-dir", cache_dir, ".", cwd=BEVFORMER)
    assert again.stdout == r.stdout and "(150 from cache)" in again.stderr
    # nothing at or above high once the dispatches are ignored; --select takes prefixes
    quiet = run_cli("check", "--ignore", "NPA907", "--fail-on", "high", "--cache-dir", cache_dir, ".", cwd=BEVFORMER)
    codes = {l.split(": ")[1].split()[0] for l in _lines(quiet.stdout)}
    assert quiet.returncode == 0 and "NPA907" not in codes and "NPA908" in codes
    nine = run_cli("check", "--select", "NPA9", "--ignore", "NPA909,NPA908", "--fail-on", "none",
                   "--cache-dir", cache_dir, ".", cwd=BEVFORMER)
    assert nine.returncode == 0 and {l.split(": ")[1].split()[0] for l in _lines(nine.stdout)} == {"NPA907", "NPA903"}


@needs_bevformer
def test_bevformer_sarif(cache_dir, tmp_path):
    out = tmp_path / "check.sarif"
    r = run_cli("check", "--format", "sarif", "-o", out, "--select", "NPA907", "--cache-dir", cache_dir,
                BEVFORMER / MODULES)
    assert r.returncode == 1 and r.stdout == ""
    run = json.loads(out.read_text())["runs"][0]
    assert [res["ruleId"] for res in run["results"]] == ["NPA907"] * 3
    assert {(res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
             res["locations"][0]["physicalLocation"]["region"]["startLine"]) for res in run["results"]} == {
        ("decoder.py", 325), ("spatial_cross_attention.py", 385), ("temporal_self_attention.py", 240)}
    assert run["tool"]["driver"]["rules"][0]["name"] == "cuda-only-dispatch"
    assert all(res["level"] == "error" for res in run["results"])


DETR_STYLE = '''\
import torch
import torch.nn as nn
from ops.functions import MSDeformAttnFunction


def ms_deform_attn_core_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    return value


class MSDeformAttn(nn.Module):
    def forward(self, value, input_spatial_shapes, input_level_start_index, sampling_locations, attention_weights):
        if not value.is_cuda:
            output = ms_deform_attn_core_pytorch(value, input_spatial_shapes, sampling_locations, attention_weights)
        else:
            output = MSDeformAttnFunction.apply(
                value, input_spatial_shapes, input_level_start_index, sampling_locations, attention_weights,
                self.im2col_step)
        return output


def nms(boxes, scores, thr):
    if boxes.is_cuda:
        return nms_ext.nms(boxes, scores, thr)
    raise NotImplementedError("nms runs on CUDA only")


def nms_fast(boxes, scores):
    if torch.cuda.is_available() and boxes.is_cuda:
        return nms_ext.nms(boxes, scores, 0.5)
    keep = scores.argsort(descending=True)
    return keep
'''

NOT_DISPATCH = '''\
import torch


def normalize(device):
    device = torch.device(device) if isinstance(device, str) else device
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{torch.cuda.current_device()}")
    return device


def place(model, x):
    if torch.cuda.is_available():
        model = model.cuda()
    else:
        model = model.float()
    y = x.cuda() if torch.cuda.is_available() else x
    if x.is_cuda:
        out = ext_module.op(x)
    return model, y


def grad_is_cuda(grad_input):
    if grad_input.is_cuda:
        grad_input = grad_input.contiguous()
    else:
        grad_input = grad_input.clone()
    return grad_input
'''


def _write(folder, name, text):
    p = folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def test_dispatch_forms_and_what_is_not_a_dispatch(tmp_path):
    _write(tmp_path, "attn.py", DETR_STYLE.replace("from ops.functions", "import nms_ext\nfrom ops.functions"))
    _write(tmp_path, "util.py", NOT_DISPATCH)
    r = run_cli("check", "--format", "json", "--no-cache", tmp_path)
    assert r.returncode == 1, r.stderr
    found = json.loads(r.stdout)["findings"]
    dispatches = {f["locations"][0]["line"]: f for f in found if f["rule"] == "NPA907"}
    src = (tmp_path / "attn.py").read_text().splitlines()
    line_of = {l.strip(): i for i, l in enumerate(src, 1)}
    msda = dispatches[line_of["if not value.is_cuda:"]]
    assert msda["details"]["fused_op"] == "mx_driving.multi_scale_deformable_attn"
    assert ("+        if value.device.type == \"npu\":\n+            output = mx_driving.multi_scale_deformable_attn("
            "value, input_spatial_shapes, input_level_start_index, sampling_locations, attention_weights)\n"
            "+        elif not value.is_cuda:") in msda["fix"]["diff"]
    raises = dispatches[line_of["if boxes.is_cuda:"]]
    assert raises["details"]["other_raises"] and raises["severity"] == "medium" and raises["fix"]["diff"] is None
    early = dispatches[line_of["if torch.cuda.is_available() and boxes.is_cuda:"]]
    assert early["details"]["other_arm"].startswith("scores.argsort(") and not early["details"]["other_raises"]
    assert len(dispatches) == 3
    # util.py: device normalisation, a model move, a conditional `.cuda()`, an arm without an alternative and
    # a branch whose CUDA arm calls no extension -- none of them is a CUDA-only dispatch or an unguarded call
    assert not [f for f in found if f["locations"][0]["file"] == "util.py" and f["rule"] in ("NPA907", "NPA909")]
    exts = [f for f in found if f["rule"] == "NPA908"]
    assert [(f["locations"][0]["file"], f["details"]["ops"]) for f in exts] == [("attn.py", ["nms_ext"])]


OPTIONAL_MODULES = """\
import torch
try:
    import scipy.optimize
except ImportError:
    scipy = None
try:
    from fast_ops import fused_nms, box_area
except (ImportError, OSError):
    fused_nms = box_area = None


def match(cost):
    return scipy.optimize.linear_sum_assignment(cost.detach().numpy())


def nms(boxes, scores):
    if fused_nms is not None and boxes.is_cuda:
        return fused_nms(boxes, scores, 0.5)
    return scores.argsort(descending=True)
"""


def test_an_optional_module_called_only_on_cuda_is_an_extension_whatever_its_name(tmp_path):
    _write(tmp_path, "ops.py", OPTIONAL_MODULES)
    r = run_cli("check", "--format", "json", "--no-cache", tmp_path)
    found = json.loads(r.stdout)["findings"]
    exts = [(f["locations"][0]["line"], f["details"]["ops"]) for f in found if f["rule"] == "NPA908"]
    assert exts == [(7, ["fused_nms"])]               # scipy is called unguarded: a plain dependency
    assert [f["locations"][0]["line"] for f in found if f["rule"] == "NPA907"] == [17]
    bev = json.loads(run_cli("check", "--format", "json", "--no-cache", REPO / "tests" / "corpus" / "bevfusion_voxel").stdout)
    ext, = [f for f in bev["findings"] if f["rule"] == "NPA908"]
    assert ext["locations"][0]["line"] == 7 and "mx_driving.bev_pool_v3" in ext["title"]


PYBIND_OP_AS_MODULE_NAME = """\
import torch
try:
    from sampling_ops import msmv_sampling_cuda
except ImportError:
    msmv_sampling_cuda = None


def sample_pyramid(value, uv):
    return (value * uv).sum(-1)


def temporal_sampling(value, uv):
    if msmv_sampling_cuda is not None and value.is_cuda:
        out = msmv_sampling_cuda(value, uv)
    else:
        out = sample_pyramid(value, uv)
    return out
"""


def test_a_cuda_named_import_called_as_a_function_is_the_extension_op_of_a_dispatch(tmp_path):
    # `from pkg import x_cuda` usually binds a module (`x_cuda.op(...)`), but a pybind op is called by itself
    _write(tmp_path, "sampling.py", PYBIND_OP_AS_MODULE_NAME)
    found = json.loads(run_cli("check", "--format", "json", "--no-cache", tmp_path).stdout)["findings"]
    d, = [f for f in found if f["rule"] == "NPA907"]
    assert d["locations"][0]["line"] == 13 and "`sample_pyramid(value, uv)` (line 16)" in d["title"]
    assert [f["locations"][0]["line"] for f in found if f["rule"] == "NPA908"] == [3]


def test_npu_arm_is_idempotent_and_keeps_both_arms():
    from npu_advise.recommendations import build, dispatch
    from npu_advise.recommendations.codemods.diffs import sha256_text
    from npu_advise.recommendations.pyast import SourceFile

    (d, *_) = dispatch.find_dispatches(SourceFile.parse(DETR_STYLE))
    f = build.dispatch_finding(d, "attn.py", DETR_STYLE)
    from npu_advise.recommendations.codemods import dispatch as codemod

    rewrite = codemod.add_npu_arm(DETR_STYLE, d.line, d.mapped_line, d.fused_key, d.device_object)
    new = rewrite.new_source
    tree = ast.parse(new)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward")
    top = fn.body[0]
    assert ast.unparse(top.test) == "value.device.type == 'npu'"
    original = next(n for n in ast.walk(ast.parse(DETR_STYLE)) if isinstance(n, ast.FunctionDef) and n.name == "forward")
    assert ast.dump(top.orelse[0]) == ast.dump(original.body[0])           # the original branch, unchanged
    assert ast.unparse(top.body[0]) == ("output = mx_driving.multi_scale_deformable_attn(value, input_spatial_shapes, "
                                        "input_level_start_index, sampling_locations, attention_weights)")
    assert f.fix.patched_sha256 == sha256_text(new) and f.fix.file_sha256 == sha256_text(DETR_STYLE)
    # the patched file has an NPU arm: this branch is not reported again, the other two still are
    before = dispatch.find_dispatches(SourceFile.parse(DETR_STYLE))
    again = dispatch.find_dispatches(SourceFile.parse(new))
    assert [x.test for x in again] == [x.test for x in before[1:]]


def test_cuda_calls_only_without_transfer_to_npu_and_cache_invalidation(tmp_path):
    src = tmp_path / "src"
    _write(src, "train.py", "import torch\nmodel = torch.nn.Linear(2, 2).cuda()\ntorch.cuda.synchronize()\n")
    cache = tmp_path / "cache"
    r = run_cli("check", "--cache-dir", cache, "train.py", cwd=src)
    assert r.returncode == 1
    assert _lines(r.stdout) == ["train.py:2:9: NPA909 [low] cuda-calls-without-transfer: 2 CUDA calls in this file "
                                "(first `torch.nn.Linear(2, 2).cuda()`) and no checked file imports torch_npu's "
                                "transfer_to_npu"]
    _write(src, "main.py", "import torch_npu\nfrom torch_npu.contrib import transfer_to_npu\n")
    both = run_cli("check", "--cache-dir", cache, ".", cwd=src)
    assert both.returncode == 0 and both.stdout == "" and "(1 from cache)" in both.stderr
    _write(src, "main.py", "import torch\n")          # changed content: scanned again
    changed = run_cli("check", "--cache-dir", cache, ".", cwd=src)
    assert "NPA909" in changed.stdout and "(1 from cache)" in changed.stderr


def test_fused_reference_local_rank_optimizer_and_bad_input(tmp_path):
    _write(tmp_path, "model.py", '''\
        import argparse
        import torch
        from torch.optim import AdamW
        from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch


        def attend(value, shapes, locs, weights):
            return multi_scale_deformable_attn_pytorch(value, shapes, locs, weights)


        def main(model):
            parser = argparse.ArgumentParser()
            parser.add_argument("--local_rank", type=int, default=0)
            return AdamW(model.parameters(), lr=1e-3)
        ''')
    _write(tmp_path, "broken.py", "def f(:\n")
    r = run_cli("check", "--diff", "--fail-on", "medium", "model.py", "broken.py", "--no-cache", cwd=tmp_path)
    assert r.returncode == 1
    codes = [l.split(": ")[1].split()[0] for l in _lines(r.stdout) if l.startswith("model.py:")]
    assert codes == ["NPA801", "NPA904", "NPA602"]
    assert "+    return mx_driving.multi_scale_deformable_attn(value, shapes, torch.cat((shapes.new_zeros((1,)), " \
           "shapes.prod(1).cumsum(0)[:-1])), locs, weights)" in r.stdout
    assert "+    return torch_npu.optim.NpuFusedAdamW(model.parameters(), lr=1e-3)" in r.stdout
    assert "1 not valid Python: broken.py" in r.stderr
    low_only = run_cli("check", "--select", "NPA602", "--fail-on", "medium", tmp_path / "model.py", "--no-cache")
    assert low_only.returncode == 0 and "NPA602" in low_only.stdout
    missing = run_cli("check", tmp_path / "nope")
    assert missing.returncode == 2 and missing.stderr.strip() == f"npu-advise: error: no such file or folder: {tmp_path / 'nope'}"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("check", empty).returncode == 2


def test_rules_are_documented_once():
    r = run_cli("rules", "NPA907")
    assert r.returncode == 0 and "cuda-only-dispatch" in r.stdout and "pure-PyTorch" in r.stdout
    listing = run_cli("rules").stdout
    for code in ("NPA602", "NPA907", "NPA908", "NPA909"):
        assert sum(l.startswith(code) for l in listing.splitlines()) == 1
