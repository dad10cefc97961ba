"""The Candidate type: which function a rewrite replaces, found from the file before and after."""
from __future__ import annotations

from pathlib import Path

from npu_advise.recommendations import registry
from npu_advise.recommendations.candidates import MODULE_LEVEL, Candidate
from npu_advise.recommendations.codemods.base import Rewrite

OLD = '''import torch


class Head:
    @staticmethod
    def densify(x):
        def inner(y):
            return y * 2
        return inner(x) + 1


def main():
    return Head.densify(torch.ones(2))
'''


def _candidate(new: str, requires=()) -> Candidate:
    rw = Rewrite(new_source=new, description="d", auto_applicable=True, requires=list(requires))
    return Candidate.from_rewrite("pkg/m.py", Path("pkg/m.py"), OLD, rw, "test.ref")


def test_nested_function_and_added_import():
    new = OLD.replace("return y * 2", "return mx_driving.double(y)").replace("import torch\n", "import torch\nimport mx_driving\n")
    c = _candidate(new, requires=["mx_driving"])
    assert c.function == "Head.densify.<locals>.inner"
    assert c.def_lines == (7, 8)
    assert c.function_source == "        def inner(y):\n            return mx_driving.double(y)\n"
    assert c.added_imports == ["import mx_driving"]
    assert c.npu_calls == ["mx_driving.double"]
    fix = c.to_fix("NPA000-x")
    assert fix.function == c.function and fix.function_lines == [7, 8]
    assert fix.diff.startswith("--- a/pkg/m.py\n+++ b/pkg/m.py\n")


def test_method_with_decorator_and_module_level_change():
    c = _candidate(OLD.replace("return inner(x) + 1", "return inner(x) + 2"))
    assert (c.function, c.def_lines) == ("Head.densify", (5, 9))
    assert c.function_source.startswith("    @staticmethod\n    def densify(x):")
    # a change that spans two functions, or one outside every def, is module-level
    both = OLD.replace("return inner(x) + 1", "return inner(x) + 2").replace("torch.ones(2)", "torch.ones(3)")
    assert _candidate(both).function == MODULE_LEVEL
    assert _candidate(OLD + "\nmain()\n").function == MODULE_LEVEL


def test_registry_dispatches_on_rule_prefixes():
    names = {g.name for g in registry.generators("NPA501")}
    assert "loops.vectorize" in names and "cpu_fallbacks" not in names
    assert {g.name for g in registry.generators("NPA302")} >= {"loops.sync_in_loop"}
    assert [s.name for s in registry.scanners()][:2] == ["fused_ops", "migration"]
