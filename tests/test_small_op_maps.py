"""NPA501 on `map(f, *lists)`: mmdet's multi_apply maps a per-image function over per-image lists; each
call issues the function's small ops once per element, as a loop would. Traps: maps of builtins, maps over
a handful of levels or config values, and a wrapper whose calls the trace cannot tell apart."""
from __future__ import annotations

import pytest

from npu_advise.analyzers import Context, small_op_loops, source
from npu_advise.load.kineto import load_kineto

from _tracing import profile_script

SCRIPT = '''\
import torch
from functools import partial

torch.manual_seed(0)
IMGS = [torch.rand(6, 4) for _ in range(10)]
LABELS = [torch.randint(0, 3, (6,)) for _ in range(10)]
POINTS = torch.rand(20, 2)
LEVELS = [torch.rand(8, 4) for _ in range(3)]
CFG = {"strides": [8, 16, 32], "names": ["p3", "p4", "p5"]}


def multi_apply(func, *args, **kwargs):
    results = map(lambda *a: func(*a, **kwargs), *args)  # map-lambda
    return tuple(map(list, zip(*results)))


def multi_apply_partial(func, *args, **kwargs):
    return tuple(map(list, zip(*map(partial(func, **kwargs), *args))))  # map-partial


def target_single(boxes, labels, points):
    d = points[:, None, :2] - boxes[None, :, :2]
    far = boxes[None, :, 2:] - points[:, None, :2]
    dist = torch.cat([d, far], -1).abs().sum(-1)
    dist = dist * 0.5 + 0.1
    best, idx = dist.min(1)
    lab = labels[idx]
    lab = torch.where(best > 2.0, torch.full_like(lab, 3), lab)
    return lab, boxes[idx] - points.repeat(1, 2)


def level_single(feat, stride):
    # a dozen small ops per level: held only by the iteration floor
    f = feat * stride
    f = f + 1.0
    f = f.relu() * 0.5 - 0.1
    f = f.sum(0) - f.mean(0) + f.amax(0)
    g = f.abs().sqrt()
    return f.exp(), g.sigmoid()


class Assigner:
    def get_targets(self, boxes, labels):
        lab, tgt = multi_apply(self._single, boxes, labels, points=POINTS)  # wrapper-call
        return torch.cat(lab), torch.cat(tgt)

    def _single(self, boxes, labels, points):
        return target_single(boxes, labels, points)


def direct():
    out = list(map(partial(target_single, points=POINTS), IMGS, LABELS))  # map-direct
    return out


def levels():
    return multi_apply_partial(level_single, LEVELS, CFG["strides"])  # levels-call


def builtins():
    sizes = list(map(int, [t.shape[0] for t in IMGS]))  # map-int
    names = list(map(str, CFG["names"]))  # map-str
    scaled = list(map(lambda s: s * 2, CFG["strides"]))  # map-config
    few = list(map(lambda t: t * 2, IMGS[:4]))  # map-few
    return sizes, names, scaled, few


def twice():
    a = multi_apply_partial(target_single, IMGS, LABELS, points=POINTS)  # twice-1
    b = multi_apply_partial(target_single, IMGS[::-1], LABELS[::-1], points=POINTS)  # twice-2
    return a, b


def step():
    return Assigner().get_targets(IMGS, LABELS), direct(), levels(), builtins(), twice()
'''


def line(tag: str) -> int:
    return next(i for i, text in enumerate(SCRIPT.splitlines(), 1) if text.endswith(f"# {tag}"))


@pytest.fixture(scope="module")
def by_line(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("maps")
    script = tmp / "maps.py"
    script.write_text(SCRIPT)
    trace = load_kineto(str(profile_script(script, "step", tmp / "t.json")))
    source.clear_cache()
    findings = small_op_loops.analyze(trace, Context(project_root=tmp)).findings
    return {f.locations[0].line: f for f in findings}


def test_a_wrapper_mapping_a_per_image_function_is_reported_at_its_call(by_line):
    f = by_line[line("wrapper-call")]
    d = f.details
    assert d["loop_kind"] == "map" and d["function"] == "get_targets"
    assert d["iterations_per_step"] == 10.0           # one call of _single per image
    assert d["map_file"] == "maps.py" and d["map_line"] == line("map-lambda")
    assert [(l.line, l.function) for l in f.locations] == [(line("wrapper-call"), "get_targets"),
                                                          (line("map-lambda"), "multi_apply")]
    assert d["ops_per_iteration"] >= 10 and d["helper_ops_per_step"] == d["ops_per_step"]
    ev = {e.label: e for e in f.evidence}
    assert "map(...) at maps.py:" in ev["iterations per step"].how
    assert f.title.startswith("A map(...) of a function over per-element lists") and "10 iterations" in f.title


def test_a_map_of_a_partial_in_the_step_is_reported_at_the_map(by_line):
    f = by_line[line("map-direct")]
    assert f.details["loop_kind"] == "map" and f.details["iterations_per_step"] == 10.0
    assert f.details["map_line"] == line("map-direct") and f.details["function"] == "direct"
    assert [l.line for l in f.locations] == [line("map-direct")]
    # the same function's ops per call through the partial as through the wrapper's lambda
    assert f.details["ops_per_iteration"] == pytest.approx(by_line[line("wrapper-call")].details["ops_per_iteration"])


def test_traps_stay_silent(by_line):
    # three levels (the callee-only iteration floor), builtins and config values (no ops), four elements of
    # one op, and a wrapper called from two lines (the trace cannot say which call issued the ops)
    assert set(by_line) == {line("wrapper-call"), line("map-direct")}
    for tag in ("levels-call", "map-partial", "map-int", "map-str", "map-config", "map-few", "twice-1", "twice-2"):
        assert line(tag) not in by_line


def test_map_calls_from_source(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("from functools import partial\n"
                 "def f(func, xs, ys, k=1):\n"
                 "    a = map(lambda *t: func(*t, k=k), xs, ys)\n"
                 "    b = list(map(partial(func, k=k), xs))\n"
                 "    c = map(self.g, xs)\n"
                 "    d = map(int, xs)\n"
                 "    e = map(xs)\n"
                 "    def inner():\n"
                 "        return map(func, ys)\n")
    source.clear_cache()
    got = [(m.line, m.target, m.lambda_line) for m in source.map_calls(p, 2)]
    assert got == [(3, "func", 3), (4, "func", None), (5, "g", None), (6, "int", None)]
    assert source.parameters(p, 2) == ("func", "xs", "ys", "k")


LIBRARY = '''\
from functools import partial


def multi_apply(func, *args, **kwargs):
    return tuple(map(list, zip(*map(partial(func, **kwargs), *args))))


def call_once(func, *args):
    return func(*args)
'''

LIBRARY_USER = '''\
import torch
from mmdet import call_once, multi_apply

IMGS = [torch.rand(6, 4) for _ in range(10)]
POINTS = torch.rand(20, 2)


def per_image(boxes, points):
    d = (points[:, None, :2] - boxes[None, :, :2]).abs()
    d = d * 0.5 + 0.1
    best, idx = d.sum(-1).min(1)
    best = best.sqrt() + best.exp()
    return best, boxes[idx] - points.repeat(1, 2)


def whole(imgs, points):
    return per_image(torch.cat(imgs), points)


def step():
    best, tgt = multi_apply(per_image, IMGS, points=POINTS)  # library-call
    once = call_once(whole, IMGS, POINTS)  # library-once
    return best, tgt, once
'''


def test_a_library_multi_apply_is_reported_at_the_call_that_passes_the_function(tmp_path, monkeypatch):
    # mmdet installed: its multi_apply and lambda are library frames, the call chain goes from the user's
    # function straight to the caller's one call that passes it. Silent: a library call that calls its
    # function back once per step (nothing iterates).
    lib = tmp_path / "site-packages" / "mmdet"      # library code however the profiler spells its path
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))
    monkeypatch.delitem(__import__("sys").modules, "mmdet", raising=False)
    script = tmp_path / "lib_user.py"
    script.write_text(LIBRARY_USER)
    trace = load_kineto(str(profile_script(script, "step", tmp_path / "t.json")))
    source.clear_cache()
    at = lambda tag: next(i for i, t in enumerate(LIBRARY_USER.splitlines(), 1) if t.endswith(f"# {tag}"))
    f, = small_op_loops.analyze(trace, Context(project_root=tmp_path)).findings
    assert f.locations[0].line == at("library-call") and [l.line for l in f.locations] == [at("library-call")]
    assert f.details["loop_kind"] == "map" and f.details["iterations_per_step"] == 10.0
    assert f.details["map_line"] is None and f.details["mapped_by_library"] == "mmdet/__init__.py:multi_apply"
    ev = {e.label: e.how for e in f.evidence}
    assert "the library function mmdet/__init__.py:multi_apply called at line 21" in ev["iterations per step"]
