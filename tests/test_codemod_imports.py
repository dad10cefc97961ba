"""codemods.base.add_imports gives what libcst's AddImportsVisitor gives (the codemods' diffs were made with
it), on import blocks of every shape the codemods meet: docstrings, __future__, merges into a `from` import,
aliases, stars, relative imports, imports after the first statement, comments before the next statement."""
from __future__ import annotations

import pytest

cst = pytest.importorskip("libcst")

SOURCES = [
    "import torch\n\nx = 1\n",
    '"""Doc."""\nimport os\nimport torch.nn as nn\nfrom torch import optim\n# a comment\ndef f():\n    pass\n',
    "from __future__ import annotations\nimport torch\nx = torch.zeros(1)\n",
    "x = 1\nimport torch\n",
    "",
    "# only a comment\n",
    '"""Only a docstring."""\n',
    "from mx_driving import npu_add_relu as add_relu\nfrom torch_npu.contrib import *\ny = 2\n",
    "from . import sibling\nfrom .pkg import thing\nimport torch_npu\n\n\nclass A:\n    pass\n",
    "import torch\nfrom torch_npu.contrib import transfer_to_npu\nfrom mx_driving.patcher import (\n    patch_a,\n)\nrun()\n",
    "__strict__ = True\nimport torch\nz = 3\n",
    "import numpy as np, torch\n\n\n# leading comment\nmain()\n",
]
REQUESTS = [
    [("torch", None)], [("mx_driving", None)], [("torch_npu", None), ("torch_npu.contrib", "transfer_to_npu")],
    [("mx_driving.patcher", "default_patcher_builder")], [("mx_driving", None), ("torch", None)],
    [("torch", "optim"), ("torch", "nn")], [("torch_npu.contrib", "other")],
]


def _libcst(source: str, imports: list) -> str:
    from libcst.codemod import CodemodContext
    from libcst.codemod.visitors import AddImportsVisitor

    context = CodemodContext()
    for mod, obj in imports:
        AddImportsVisitor.add_needed_import(context, mod, obj)
    return cst.parse_module(source).visit(AddImportsVisitor(context)).code


@pytest.mark.parametrize("source", SOURCES)
def test_add_imports_matches_libcst(source):
    from npu_advise.recommendations.codemods.base import add_imports

    for imports in REQUESTS:
        assert add_imports(cst.parse_module(source), imports).code == _libcst(source, imports), (source, imports)
