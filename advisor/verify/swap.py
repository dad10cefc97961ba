"""Install a rewritten function beside the original without editing any file.

`instrument(source, path, targets)` compiles a module's own source with one statement added after each
target def (`name = __npu_advise_pair__(ID, name, DECORATOR)`, on the def's last line): the original functions
are compiled from the file exactly as Python would, and the added statement hands each one, once it exists
(with its decorators, its closure cells and, for methods, the class cell `super()` reads), to the
verification session. A decorated def's own function is paired where the decorator keeps it (the closure
cell of a functools.wraps-style wrapper), so no decorator runs twice. `build_candidate` compiles the rewritten def in the original's own module globals
and closure cells, so it sees what the original sees.
"""
from __future__ import annotations

import ast
import textwrap
import types

from npu_advise.recommendations.candidates import function_defs

PAIR_BUILTIN = "__npu_advise_pair__"
HANDLED_DECORATORS = ("staticmethod", "classmethod")      # re-applied to the paired function


class NotSwappable(Exception):
    """The function cannot be run beside its rewrite; the message says why."""


def instrument(source: str, path: str, targets: dict):
    """(code object of the module, {qualname: reason} for targets that cannot be installed).

    `targets`: qualified name -> target id, or a list of ids (several candidates for one function are
    stacked: each pairs what the one before bound)."""
    tree = ast.parse(source, path)
    defs = function_defs(tree)
    problems = {}
    for name, tids in targets.items():
        if name not in defs:
            problems[name] = f"no function {name} in {path} as it is now"
            continue
        node, body = defs[name]
        if isinstance(node, ast.AsyncFunctionDef):
            problems[name] = "an async function (its calls return coroutines, which are not compared)"
            continue
        # Other decorators are not run again: the paired function goes where the decorated object keeps
        # the def's function (Target.pair finds it).
        odd = [d for d in node.decorator_list if _decorator_name(d) not in HANDLED_DECORATORS]
        decorator = ast.unparse(odd[0]) if odd else None
        at = body.index(node) + 1
        for tid in ([tids] if isinstance(tids, str) else tids):
            stmt = ast.parse(f"{node.name} = {PAIR_BUILTIN}({tid!r}, {node.name}, {decorator!r})").body[0]
            for n in ast.walk(stmt):
                n.lineno = n.end_lineno = node.end_lineno
                n.col_offset, n.end_col_offset = node.col_offset, node.col_offset
            body.insert(at, stmt)
            at += 1
    return compile(tree, path, "exec", dont_inherit=True), problems


def _decorator_name(node) -> str:
    return node.id if isinstance(node, ast.Name) else ""


def unwrap(obj):
    """(kind, plain function) of what a def bound: 'function', 'staticmethod' or 'classmethod'."""
    if isinstance(obj, staticmethod):
        return "staticmethod", obj.__func__
    if isinstance(obj, classmethod):
        return "classmethod", obj.__func__
    if isinstance(obj, types.FunctionType):
        return "function", obj
    raise NotSwappable(f"the name is bound to a {type(obj).__name__}, not a function")


PAIRED_ORIGINAL = "__npu_advise_original__"    # on a paired function: the def's own function it stands for


def own_function(fn):
    """The def's own function behind `fn` (itself, or what a paired function stands for)."""
    return getattr(fn, PAIRED_ORIGINAL, fn)


def find_def_function(obj, qualname: str, decorator: str, depth: int = 4):
    """Where a decorated def's own function is kept: ("self", fn) when the decorator returned it (registries,
    markers), or ("cell", cell) for the closure cell of the decorator's wrapper that calls it (functools.wraps-
    style wrappers: torch.no_grad(), torch.inference_mode(), torch.autocast(...), user decorators), searched
    through up to `depth` nested wrappers. Raises NotSwappable with what the decorator made instead."""
    name = qualname.rsplit(".", 1)[-1]

    def is_def(fn) -> bool:
        fn = own_function(fn)
        return (isinstance(fn, types.FunctionType) and fn.__code__.co_name == name
                and fn.__qualname__ == qualname)

    outer = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    if is_def(outer):
        return "self", outer
    level = [outer]
    for _ in range(depth):
        nxt = []
        for fn in level:
            if not isinstance(fn, types.FunctionType):
                continue
            for cell in fn.__closure__ or ():
                try:
                    held = cell.cell_contents
                except ValueError:          # an empty cell
                    continue
                if is_def(held):
                    return "cell", cell
                if isinstance(held, types.FunctionType):
                    nxt.append(held)
        level = nxt
    what = type(outer).__name__
    raise NotSwappable(f"decorated with @{decorator}, which made a {what} that does not call the function through "
                       f"a closure cell of a wrapper (as functools.wraps-style decorators do), so the rewrite "
                       f"cannot be run in its place")


def rewrap(kind: str, fn):
    return {"staticmethod": staticmethod, "classmethod": classmethod}.get(kind, lambda f: f)(fn)


def compile_candidate(function_source: str, name: str, original) -> types.CodeType:
    """The code object of the rewritten def, compiled inside a scope that gives it the same free variables
    (closure names, and the `__class__` cell of a method) as the original."""
    fn_src = _dedent(function_source)
    try:
        tree = ast.parse(fn_src)
    except SyntaxError as exc:
        raise NotSwappable(f"the rewritten function does not parse: {exc.msg} (line {exc.lineno})") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef) or tree.body[0].name != name:
        raise NotSwappable(f"the rewritten source is not one def of {name}")
    fn = tree.body[0]
    fn.decorator_list = []                       # the original's kind (static/class method) is re-applied
    freevars = original.__code__.co_freevars
    scope = ast.parse("def __npa_scope__():\n    pass").body[0]
    scope.body = [ast.parse(f"{v} = None").body[0] for v in freevars if v != "__class__"]
    if "__class__" in freevars:
        holder = ast.parse("class __npa_class__:\n    pass").body[0]
        holder.body = [fn]
        scope.body += [holder]
    else:
        scope.body += [fn]
    module = ast.Module(body=[scope], type_ignores=[])
    ast.fix_missing_locations(module)
    code = compile(module, f"<npu-advise rewrite of {original.__qualname__}>", "exec", dont_inherit=True)
    found = _find_code(code, name)
    if found is None:
        raise NotSwappable("the rewritten function did not compile to one code object")
    return found


def _find_code(code: types.CodeType, name: str):
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name:
                return const
            inner = _find_code(const, name)
            if inner is not None:
                return inner
    return None


def build_candidate(code: types.CodeType, original, defaults_from: str, globals_=None):
    """A function of `code` in the original's globals (or `globals_`) and closure cells."""
    cells = dict(zip(original.__code__.co_freevars, original.__closure__ or ()))
    missing = [v for v in code.co_freevars if v not in cells]
    if missing:
        raise NotSwappable(f"the rewritten function reads {', '.join(missing)} from an enclosing scope, "
                           f"which the original does not")
    fn = types.FunctionType(code, original.__globals__ if globals_ is None else globals_, original.__name__,
                            None, tuple(cells[v] for v in code.co_freevars))
    fn.__defaults__, fn.__kwdefaults__ = _defaults(defaults_from, original)
    fn.__qualname__ = original.__qualname__
    fn.__module__ = original.__module__
    return fn


def _defaults(function_source: str, original):
    """Default values of the rewritten def: the original's when the parameter lists read the same (the
    usual case), else evaluated in the original's globals."""
    fn = ast.parse(_dedent(function_source)).body[0]
    if ast.dump(fn.args) == _original_args_dump(original):
        return original.__defaults__, original.__kwdefaults__
    ns = dict(original.__globals__)
    defaults = tuple(eval(compile(ast.Expression(d), "<default>", "eval"), ns) for d in fn.args.defaults) or None
    kw = {a.arg: eval(compile(ast.Expression(d), "<default>", "eval"), ns)
          for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None} or None
    return defaults, kw


def _original_args_dump(original) -> str:
    import inspect
    try:
        src = _dedent(inspect.getsource(original))
        node = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef))
        return ast.dump(node.args)
    except (OSError, TypeError, StopIteration, SyntaxError):
        return ""


def _dedent(source: str) -> str:
    # CRLF files: textwrap.dedent does not see a margin on lines ending in \r
    return textwrap.dedent(source.replace("\r\n", "\n"))


class Overlay(dict):
    """Globals for a rewrite that calls NPU-only APIs: the module's own globals, with the packages of
    those APIs (absent on this machine) served by namespaces of pure-PyTorch references."""

    def __init__(self, module_globals: dict, shims: dict):
        super().__init__()
        self.module_globals, self.shims = module_globals, shims

    def __missing__(self, key):
        if key in self.shims:
            return self.shims[key]
        return self.module_globals[key]
