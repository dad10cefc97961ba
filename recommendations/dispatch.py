"""CUDA-only code that an NPU run silently avoids or cannot run (rules NPA907-NPA909), found in the syntax
tree (pyast.py, no libcst):

* CUDA-only dispatch: `if torch.cuda.is_available() and value.is_cuda: <CUDA extension> else: <pure
  PyTorch>` (BEVFormer's decoder.py line 325). On an NPU the test is false, so every step takes the slow
  arm, and nothing says so;
* compiled CUDA extensions: `ext_loader.load_ext(...)`, `torch.utils.cpp_extension`, `*_cuda` / `*_ext`
  modules, and any module imported under `try: ... except ImportError:` whose names are called only in
  CUDA-only arms; each named with the mx_driving op that replaces it where one exists;
* `.cuda()` / `torch.cuda.*` calls in a project that never imports torch_npu's `transfer_to_npu`.

What counts as a CUDA test, an extension loader or an extension module is data (catalog
`cuda_migration`). The NPU arm's rewrite is codemods/dispatch.py; the rules are documented in
rule_docs.py.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Optional

from .catalog import load
from .pyast import SourceFile, callee_text, dotted, one_line

# Packages whose functions are compiled (CUDA) ops: mmcv.ops.modulated_deform_conv2d, ... -- except their
# pure-PyTorch references (mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch).
COMPILED_OP_PACKAGES = ("mmcv.ops.", "mmcv._ext", "spconv.", "torch_scatter.")


def _compiled_op(qualified: str) -> bool:
    return qualified.startswith(COMPILED_OP_PACKAGES) and not qualified.endswith("_pytorch")


@dataclass
class Dispatch:
    line: int
    col: int
    end_line: int              # last line of the `if` statement (its arms)
    function: str
    test: str                  # the condition, one line
    cuda_call: str             # the extension call in the CUDA arm, one line
    cuda_line: int
    other: str                 # what the other arm runs: its first call, one line, or "raise ..."
    other_line: int
    other_raises: bool
    fused_key: Optional[str]   # catalog fused op one of the arms maps onto
    mapped_line: Optional[int]  # line of that arm's call (its arguments map onto the fused op)
    device_object: Optional[str]   # the tensor whose device the test reads (`value` of `value.is_cuda`)
    replacements: tuple = ()   # mx_driving ops the CUDA arm's extension op is named for (catalog extension_ops)
    other_callee: Optional[str] = None   # the name the other arm's first call calls (`sample_pyramid`, `self.fn`: fn)


@dataclass
class Extension:
    line: int
    col: int
    function: str
    what: str                  # one line: what is loaded or built
    ops: list                  # op / module names it names
    replacements: list         # mx_driving ops for them
    used: bool                 # the bound extension module is used in this file


# ---------------------------------------------------------------------------------------------
# CUDA tests
# ---------------------------------------------------------------------------------------------
def _cfg() -> dict:
    return load().data["cuda_migration"]


def _cuda_term(e) -> Optional[tuple]:
    """(polarity, device object) when `e` tests for CUDA: True when `e` is true on CUDA."""
    tests = _cfg()["dispatch_tests"]
    if isinstance(e, ast.Call) and (dotted(e.func) or "").endswith(tuple(tests["calls"])):
        return True, None
    if isinstance(e, ast.Attribute) and e.attr in tests["attributes"]:
        return True, dotted(e.value)
    if isinstance(e, ast.Compare) and len(e.ops) == 1:
        left, right, op = e.left, e.comparators[0], e.ops[0]
        for side, other in ((left, right), (right, left)):
            if isinstance(side, ast.Constant) and side.value in tests["device_strings"]:
                obj = None
                if isinstance(other, ast.Attribute) and other.attr == "type":
                    inner = other.value
                    obj = dotted(inner.value) if isinstance(inner, ast.Attribute) and inner.attr == "device" else None
                elif not (isinstance(other, ast.Call) and isinstance(other.func, ast.Name) and other.func.id == "str"):
                    continue
                if isinstance(op, (ast.Eq, ast.Is)):
                    return True, obj
                if isinstance(op, (ast.NotEq, ast.IsNot)):
                    return False, obj
    return None


def cuda_polarity(test) -> Optional[tuple]:
    """(polarity, device object) of an `if` test that checks for CUDA: polarity True when the body is the
    CUDA arm, False when the `else` is; None when the test does not decide on CUDA alone."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = cuda_polarity(test.operand)
        return (not inner[0], inner[1]) if inner else None
    term = _cuda_term(test)
    if term is not None:
        return term
    if isinstance(test, ast.BoolOp):
        terms = [cuda_polarity(v) for v in test.values]
        cuda = [t for t in terms if t is not None]
        if not cuda or len({p for p, _ in cuda}) != 1:
            return None
        polarity, obj = cuda[0][0], next((o for _, o in cuda if o), None)
        if isinstance(test.op, ast.And) and polarity:           # the body runs only on CUDA
            return True, obj
        if isinstance(test.op, ast.Or) and len(cuda) == len(terms):
            return polarity, obj
    return None


# ---------------------------------------------------------------------------------------------
# Extension calls
# ---------------------------------------------------------------------------------------------
class _Bindings:
    """Names of one file bound to extension modules, their ops, and autograd Function classes."""

    def __init__(self, sf: SourceFile):
        self.sf = sf
        cfg = _cfg()
        self.modules, self.functions, self.fn_classes = set(), set(), set()
        self.loads = []            # (node, what, ops, bound name or None)
        loaders = tuple(l.rsplit(".", 1)[-1] for l in cfg["extension_loaders"])
        loader_q = set(cfg["extension_loaders"])
        suffixes = tuple(cfg["extension_module_suffixes"])
        for node in sf.of(ast.ClassDef, ast.Assign, ast.Import, ast.ImportFrom, ast.Call):
            if isinstance(node, ast.ClassDef) and any((dotted(b) or "").endswith("Function") for b in node.bases):
                self.fn_classes.add(node.name)
            elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in self.fn_classes:
                self.fn_classes |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.rsplit(".", 1)[-1].endswith(suffixes):
                        bound = a.asname or a.name.split(".")[0]
                        self.modules.add(bound)
                        self.loads.append((node, f"import of `{a.name}`", [a.name.rsplit(".", 1)[-1]], bound))
            elif isinstance(node, ast.ImportFrom):
                from_ext = (node.module or "").rsplit(".", 1)[-1].endswith(suffixes)
                names = [a for a in node.names if from_ext or a.name.endswith(suffixes)]
                for a in names:
                    # `from x_ext import op` binds an op of the extension; `from pkg import x_cuda` its module
                    (self.functions if from_ext else self.modules).add(a.asname or a.name)
                if names:
                    mod = "." * node.level + (node.module or "")
                    what = mod if from_ext else ", ".join(f"{mod}.{a.name}".lstrip(".") for a in names)
                    self.loads.append((node, f"import of `{what.lstrip('.') or what}`",
                                       [a.name for a in names],
                                       (names[0].asname or names[0].name) if not from_ext else None))
            elif isinstance(node, ast.Call):
                q = sf.qualified(node.func) or dotted(node.func) or ""
                if q in loader_q or (q.endswith(".load_ext") and "ext_loader" in q):
                    ops = [s.value for a in node.args for s in (a.elts if isinstance(a, (ast.List, ast.Tuple)) else [a])
                           if isinstance(s, ast.Constant) and isinstance(s.value, str)]
                    ops += [s.value for k in node.keywords if k.arg in ("name", "sources")
                            for s in (k.value.elts if isinstance(k.value, (ast.List, ast.Tuple)) else [k.value])
                            if isinstance(s, ast.Constant) and isinstance(s.value, str)]
                    parent = sf.parents.get(node)
                    bound = None
                    if isinstance(parent, ast.Assign) and len(parent.targets) == 1 and isinstance(parent.targets[0], ast.Name):
                        bound = parent.targets[0].id
                        self.modules.add(bound)
                    self.loads.append((node, f"`{one_line(sf.segment(node), 100)}`", ops, bound))
        self.loaders = loaders
        self._add_optional_cuda_modules(sf)

    def _add_optional_cuda_modules(self, sf: SourceFile):
        """A module imported under `try: ... except ImportError:` whose names are called only in CUDA-only
        arms is an optional compiled extension whatever its name (`from bevfusion_ops import
        bev_pool_forward`, then `if bev_pool_forward is not None and x.is_cuda:`)."""
        known = {id(node) for node, *_ in self.loads}
        arms = _cuda_arms(sf)
        for node in _guarded_imports(sf):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else \
                [] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            if id(node) in known or any(m.split(".", 1)[0] in _LIBRARY_ROOTS for m in modules):
                continue
            bound = {(a.asname or a.name.split(".")[0]): a.name for a in node.names if a.name != "*"}
            called = set()
            for call in sf.calls():
                head = (dotted(call.func) or "").split(".", 1)[0]
                if head in bound:
                    if not any(a <= call.lineno <= b for a, b in arms):
                        break           # also called where no CUDA test guards it: a plain dependency
                    called.add(head)
            else:
                if not called:
                    continue
                if isinstance(node, ast.ImportFrom):
                    self.functions |= called
                    mod = "." * node.level + (node.module or "")
                    self.loads.append((node, f"import of `{mod}`", [bound[n] for n in sorted(called)], None))
                else:
                    self.modules |= called
                    self.loads.append((node, f"import of `{', '.join(bound[n] for n in sorted(called))}`",
                                       [bound[n].rsplit(".", 1)[-1] for n in sorted(called)], None))

    def is_extension_call(self, call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "apply":
            owner = dotted(f.value) or ""
            last = owner.rsplit(".", 1)[-1]
            return last in self.fn_classes or "Function" in last
        d = dotted(f) or ""
        head = d.split(".", 1)[0]
        # `from pkg import x_cuda` binds a module or a pybind op: called by itself, it is the op
        return ((head in self.modules and "." in d) or (isinstance(f, ast.Name) and f.id in self.functions | self.modules)
                or _compiled_op(self.sf.qualified(f) or ""))


# Packages of ops with NPU builds of their own, or whose calls are judged by their qualified names
# (COMPILED_OP_PACKAGES): an optional import of them is no unknown CUDA extension.
_LIBRARY_ROOTS = {"torch", "torchvision", "torch_npu", "mx_driving"} | {p.split(".", 1)[0] for p in COMPILED_OP_PACKAGES}


_IMPORT_ERRORS = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")


def _guarded_imports(sf: SourceFile) -> list:
    """Import statements directly in the body of a `try` whose handlers catch a failed import."""
    out = []
    for t in sf.of(ast.Try):
        caught = set()
        for h in t.handlers:
            types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            caught |= {"Exception" if ty is None else (dotted(ty) or "").rsplit(".", 1)[-1] for ty in types}
        if caught & set(_IMPORT_ERRORS):
            out += [s for s in t.body if isinstance(s, (ast.Import, ast.ImportFrom))]
    return out


def _calls_in(stmts) -> list:
    """Calls in `stmts` in source order, not descending into nested function or class definitions."""
    out, todo = [], list(stmts)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call):
            out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def _ends_in_exit(stmts) -> bool:
    return bool(stmts) and isinstance(stmts[-1], (ast.Return, ast.Raise))


def _other_arm(sf: SourceFile, node: ast.If, cuda_in_body: bool) -> Optional[list]:
    """The statements that run when the CUDA test is false."""
    if cuda_in_body:
        if node.orelse:
            return node.orelse
        if _ends_in_exit(node.body):          # `if cuda: return ext(...)` followed by the generic path
            parent = sf.parents.get(node)
            for name in ("body", "orelse", "finalbody"):
                block = getattr(parent, name, None)
                if isinstance(block, list) and node in block:
                    rest = block[block.index(node) + 1:]
                    return rest or None
        return None
    return node.body


def _bindings(sf: SourceFile) -> _Bindings:
    if "dispatch_bindings" not in sf.memo:
        sf.memo["dispatch_bindings"] = _Bindings(sf)
    return sf.memo["dispatch_bindings"]


def find_dispatches(sf: SourceFile) -> list:
    cat = load()
    binds = _bindings(sf)
    out = []
    for node in sf.of(ast.If):
        pol = cuda_polarity(node.test)
        if pol is None or _has_npu_arm(sf, node):
            continue
        cuda_in_body, obj = pol
        cuda_arm = node.body if cuda_in_body else node.orelse
        other = _other_arm(sf, node, cuda_in_body)
        if not cuda_arm or not other:
            continue
        ext = [c for c in _calls_in(cuda_arm) if binds.is_extension_call(c)
               or _mapped(cat, c, "autograd_apply")]
        if not ext or any(binds.is_extension_call(c) for c in _calls_in(other)):
            continue
        other_calls = _calls_in(other)
        raises = all(isinstance(s, ast.Raise) for s in other) or (not other_calls and _ends_in_exit(other)
                                                                   and isinstance(other[-1], ast.Raise))
        if not other_calls and not raises:
            continue
        first_other = other[0] if raises else other_calls[0]
        mapped = next(((c, r) for c in ext for r in [_mapped(cat, c, "autograd_apply")] if r), None) or \
            next(((c, r) for c in other_calls for r in [_mapped(cat, c, "function")] if r), None)
        out.append(Dispatch(
            line=node.lineno, col=node.col_offset + 1, end_line=max(node.end_lineno, other[-1].end_lineno), function=sf.function_name(node),
            test=one_line(sf.segment(node.test), 100), cuda_call=one_line(sf.segment(ext[0]), 100),
            cuda_line=ext[0].lineno, other=one_line(sf.segment(first_other), 100), other_line=first_other.lineno,
            other_raises=raises, fused_key=mapped[1][0].key if mapped else None,
            mapped_line=mapped[0].lineno if mapped else None,
            device_object=obj or (dotted(mapped[0].args[0]) if mapped and mapped[0].args else None),
            replacements=tuple(extension_replacements([callee_text(ext[0]), sf.qualified(ext[0].func) or ""])),
            other_callee=None if raises else (callee_text(first_other).rsplit(".", 1)[-1] or None)))
    return sorted(out, key=lambda d: d.line)


def with_dispatches(dispatches: list, matches: list) -> list:
    """(match, dispatch or None) for the fused-op matches to report: outside every dispatch all of them;
    inside one (by its line, or by a call of the function it is in: a reference called from the arm), only the
    match nearest the arm an NPU runs (the other arm), since the dispatch finding's NPU arm is that replacement."""
    out, kept = [], {}

    def distance(m, d):      # a match's nearest line (its own, or a call of the function it is in) to the arm
        return min(abs(l - d.other_line) for l in (m.line, *m.related) if d.line <= l <= d.end_line)

    for m in matches:
        d = next((d for d in dispatches if any(d.line <= l <= d.end_line for l in (m.line, *m.related))), None)
        if d is None:
            out.append((m, None))
        elif d.line not in kept or distance(m, d) < distance(kept[d.line][0], d):
            kept[d.line] = (m, d)
    return sorted(out + list(kept.values()), key=lambda md: (md[0].line, md[0].col))


def _has_npu_arm(sf: SourceFile, node: ast.If) -> bool:
    """The `if` is an `elif` of a chain that already tests for the NPU (`x.device.type == "npu"`,
    `torch.npu.is_available()`, `x.is_npu`): the NPA907 rewrite, or the user's own NPU arm."""
    parent = sf.parents.get(node)
    while isinstance(parent, ast.If) and parent.orelse == [node]:
        if any(isinstance(n, ast.Constant) and n.value == "npu" or isinstance(n, ast.Attribute) and n.attr in ("npu", "is_npu")
               for n in ast.walk(parent.test)):
            return True
        node, parent = parent, sf.parents.get(parent)
    return False


def _mapped(cat, call: ast.Call, kind: str):
    found = cat.replacement_for_callee(callee_text(call))
    return found if found is not None and found[1].kind == kind else None


# ---------------------------------------------------------------------------------------------
# Extensions and .cuda() calls
# ---------------------------------------------------------------------------------------------
def extension_replacements(names) -> list:
    """mx_driving ops that replace the extension ops or modules `names`, by the catalog's name fragments; per
    name only the longest fragments count (`modulated_deform_conv`, not also `deform_conv`)."""
    table = _cfg()["extension_ops"]
    out = []
    for n in names:
        low = n.lower()
        keys = [k for k in table if k in low]
        for key in keys:
            if not any(key != other and key in other for other in keys) and table[key] not in out:
                out.append(table[key])
    return out


def find_extensions(sf: SourceFile) -> list:
    binds = _bindings(sf)
    used_names = {n.id for n in sf.of(ast.Name) if isinstance(n.ctx, ast.Load)}
    out = []
    for node, what, ops, bound in binds.loads:
        out.append(Extension(line=node.lineno, col=node.col_offset + 1, function=sf.function_name(node), what=what,
                             ops=ops, replacements=extension_replacements(ops + [what]),
                             used=bound is None or bound in used_names))
    return sorted(out, key=lambda e: e.line)


def cuda_calls(sf: SourceFile) -> list:
    """(line, col, text) of `.cuda()` calls and of the `torch.cuda.*` calls that need a CUDA device (catalog
    `cuda_migration.device_calls`; decorators such as `torch.cuda.amp.custom_fwd` work without one)."""
    device_calls = set(_cfg()["device_calls"])
    guarded = _cuda_arms(sf)
    out = []
    for call in sf.calls():
        f = call.func
        q = sf.qualified(f) or ""
        if any(a <= call.lineno <= b for a, b in guarded):
            continue        # runs only where CUDA is present
        if (isinstance(f, ast.Attribute) and f.attr == "cuda" and not q.startswith("torch.")) or q in device_calls:
            out.append((call.lineno, call.col_offset + 1, one_line(sf.segment(call), 80)))
    return out


def _cuda_arms(sf: SourceFile) -> list:
    """(first, last) lines of the arms of `if` statements and conditional expressions that run only on CUDA."""
    out = []
    for node in sf.of(ast.If, ast.IfExp):
        pol = cuda_polarity(node.test)
        if pol is None:
            continue
        arm = node.body if pol[0] else node.orelse
        arm = arm if isinstance(arm, list) else [arm]
        if arm:
            out.append((arm[0].lineno, arm[-1].end_lineno))
    return out


def imports_npu_redirect(sf: SourceFile) -> bool:
    """The file imports torch_npu or mx_driving (mx_driving imports transfer_to_npu itself)."""
    return any(q.split(".", 1)[0] in ("torch_npu", "mx_driving") for q in sf.imports.values())
