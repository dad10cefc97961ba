"""`npu-advise check`: the static scan of a repository, no profile needed.

Per file (one `ast` parse, pyast.py) it reports what the syntax tree alone supports: CUDA-only dispatch
(NPA907), compiled CUDA extensions (NPA908), known reference implementations of fused ops (NPA801-809,
matchers.py), mmcv DDP wrappers (NPA903), `--local_rank` without `--local-rank` (NPA904), torch optimizer
constructors in code and in mmcv/mmengine configs (NPA602). `.cuda()` calls (NPA909) are reported after
all files are scanned, when none of them imports torch_npu or mx_driving.

Each file's result depends only on its path and content, so it is cached under the SHA-256 of both (and
of the checker's own code and catalog, so an upgraded checker never reads a stale entry). Files not in
the cache are scanned in parallel worker processes.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from npu_advise import progress
from npu_advise.analyzers.source import python_files
from npu_advise.findings import SEVERITIES, Evidence, Finding, Fix, Location

from . import build, dispatch, matchers
from .catalog import load
from .pyast import SourceFile, one_line

MAX_FILES = 20000
MAX_FILE_BYTES = 2_000_000
# Optimizer keywords that already make the update multi-tensor.
MULTI_TENSOR_FLAGS = ("foreach", "fused")
# Below this many files to scan, worker processes cost more than they save.
MIN_FILES_FOR_WORKERS = 8
# Static severities: no trace says what a finding costs, so they follow what the code certainly does.
STATIC_SEVERITY = {"fused_op": "medium", "npu_ddp": "low", "local_rank": "medium", "optimizer": "low",
                   "config_optimizer": "info"}
# The code whose behaviour the cached results depend on.
_CHECKER_FILES = ("check.py", "build.py", "dispatch.py", "matchers.py", "structure.py", "pyast.py", "catalog.json",
                  "candidates.py",
                  "rule_docs.py", "codemods/dispatch.py", "codemods/fused_ops.py", "codemods/migration.py",
                  "codemods/optimizer.py", "codemods/base.py")


@dataclass
class CheckResult:
    findings: list                       # list[Finding], by path and line
    files: int                           # files scanned
    cached: int                          # of which read from the cache
    unparsable: list = field(default_factory=list)   # relative paths that are not valid Python


def checker_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _CHECKER_FILES:
        try:
            h.update((here / name).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "npu-advise" / "check"


# ---------------------------------------------------------------------------------------------
# One file
# ---------------------------------------------------------------------------------------------
def check_source(rel: str, text: str, fixes: bool = True) -> dict:
    """Everything `check` reports about one file: {"findings": [Finding dicts], "cuda_calls": [...],
    "npu_redirect": bool, "parses": bool}. Pure: depends only on `rel`, `text` and `fixes` (whether the
    findings carry their diffs: libcst is loaded only then, and only for a file with a finding)."""
    sf = SourceFile.parse(text)
    if sf is None:
        return {"findings": [], "cuda_calls": [], "npu_redirect": False, "parses": False}
    out = []
    dispatches = dispatch.find_dispatches(sf)
    for d in dispatches:
        out.append(build.dispatch_finding(d, rel, text, with_fix=fixes))
    for match, d in dispatch.with_dispatches(dispatches, matchers.scan(text, sf)):
        out.append(build.fused_finding(match, rel, text, STATIC_SEVERITY["fused_op"],
                                       rewrite=build.fused_rewrite(match, text) if fixes and d is None else None,
                                       dispatch=d))
    out += [build.extension_finding(e, rel) for e in dispatch.find_extensions(sf)]
    out += _migration_findings(sf, rel, text, fixes)
    out += _optimizer_findings(sf, rel, text, fixes)
    return {"findings": [f.to_dict() for f in out], "cuda_calls": dispatch.cuda_calls(sf),
            "npu_redirect": dispatch.imports_npu_redirect(sf), "parses": True,
            "imported_calls": matchers.imported_calls(sf)}


def _static_finding(kind: str, rule, rel: str, text: str, node, function: str, title: str, ref: str,
                    rewrite_fn, advice: str) -> Finding:
    """A finding whose fix is `rewrite_fn()`'s diff when fixes are asked for (and it applies), else advice."""
    f = Finding(rule=rule.code, category="optimizer" if rule.category == "optimizer" else "migration",
                title=title, severity=STATIC_SEVERITY[kind], locations=[Location(rel, node.lineno, function)],
                details={"kind": kind, "col": node.col_offset + 1, "static": "found in the source; no profile"})
    rewrite = rewrite_fn() if rewrite_fn is not None else None
    if rewrite is not None:
        build.diff_attacher(rel, text)(f, rewrite, ref)
        if rewrite.requires:
            f.details["fix_requires"] = list(rewrite.requires)
    else:
        f.fix = Fix(description=advice, auto_applicable=False, fix_id=f.id, catalog_ref=ref, file=rel)
    return f


def _codemod(name: str):
    """A codemods module (libcst), imported only when a fix is built."""
    import importlib

    return importlib.import_module(f"{__package__}.codemods.{name}")


def _migration_findings(sf: SourceFile, rel: str, text: str, fixes: bool) -> list:
    from . import entry

    out = []
    ddp = load().migration["npu_ddp"]["map"]
    for call in sf.calls():
        q = sf.qualified(call.func) or ""
        if q.startswith("mmcv.") and q.rsplit(".", 1)[-1] in ddp:
            rule = entry.RULES["npu_ddp"]
            name = q.rsplit(".", 1)[-1]
            out.append(_static_finding(
                "npu_ddp", rule, rel, text, call, sf.function_name(call),
                f"{rule.name}: `{name}` ({rule.why}) -> {ddp[name]} from mmcv.device.npu", "migration.npu_ddp",
                (lambda: _codemod("migration").rewrite_npu_ddp(text)) if fixes else None, rule.fix))
            break       # one rewrite changes every wrapper of the file
    if "--local_rank" in text:
        args = [c for c in sf.calls() if isinstance(c.func, ast.Attribute) and c.func.attr == "add_argument"]
        flags = {a.value: c for c in args for a in c.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        if "--local_rank" in flags and "--local-rank" not in flags:
            rule = entry.RULES["local_rank"]
            call = flags["--local_rank"]
            out.append(_static_finding(
                "local_rank", rule, rel, text, call, sf.function_name(call), f"{rule.name}: {rule.detects} {rule.why}",
                "migration.local_rank", (lambda: _codemod("migration").rewrite_local_rank(text)) if fixes else None, rule.fix))
    return out


def _optimizer_findings(sf: SourceFile, rel: str, text: str, fixes: bool) -> list:
    """torch.optim constructors (qualified through the imports) and `optimizer = dict(type='AdamW')` configs."""
    from .rule_docs import SOURCE_RULES

    rule = SOURCE_RULES["optimizer_constructor"]
    opts = load().optimizers
    by_qname = {o.torch: o for o in opts.values()}
    out = []
    for call in sf.calls():
        opt = by_qname.get(sf.qualified(call.func))
        if opt is None or any(k.arg in MULTI_TENSOR_FLAGS and not (isinstance(k.value, ast.Constant) and not k.value.value)
                              for k in call.keywords):
            continue        # foreach=True / fused=True: already one multi-tensor update (NPA601 measures the rest)
        out.append(_static_finding(
            "optimizer", rule, rel, text, call, sf.function_name(call),
            f"{rule.name}: `{one_line(sf.segment(call), 80)}` can be {opt.replacement} (one fused update for all "
            f"parameters)", f"optimizers.{opt.name}",
            (lambda line=call.lineno, name=opt.name: _codemod("optimizer").rewrite_optimizer(text, line=line, name=name))
            if fixes else None, f"Use {opt.replacement} with the same arguments."))
    config = _config_optimizer(sf, opts)
    if config is not None:
        node, name = config
        out.append(_static_finding(
            "config_optimizer", rule, rel, text, node, "<module>",
            f"{rule.name}: config optimizer type='{name}' can be '{opts[name].config_type}' (torch_npu fused)",
            f"optimizers.{name}", (lambda: _codemod("optimizer").rewrite_config_optimizer(text)) if fixes else None,
            f"type='{opts[name].config_type}' (needs torch_npu and an mmcv/mmengine build for the NPU)."))
    return out


def _config_optimizer(sf: SourceFile, opts: dict) -> Optional[tuple]:
    """(node, name) of the first `optimizer = dict(type='X')` / `optimizer=dict(type='X')` with X in the catalog."""
    def type_of(call) -> Optional[str]:
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "dict":
            for k in call.keywords:
                if k.arg == "type" and isinstance(k.value, ast.Constant) and k.value.value in opts:
                    return k.value.value
        return None

    if "optimizer" not in sf.source:
        return None
    for node in sf.of(ast.Assign, ast.keyword):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id == "optimizer" and type_of(node.value):
            return node, type_of(node.value)
        if isinstance(node, ast.keyword) and node.arg == "optimizer" and type_of(node.value):
            return node.value, type_of(node.value)
    return None


# ---------------------------------------------------------------------------------------------
# A project
# ---------------------------------------------------------------------------------------------
def project_root(paths: list) -> Path:
    """The folder the findings' paths are relative to: the common folder of PATHs."""
    dirs = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in paths if Path(p).exists()]
    return Path(os.path.commonpath([str(d) for d in dirs])) if dirs else Path.cwd()


def _collect(paths: list) -> tuple:
    """(root, [(absolute path, path relative to root)]) of the .py files named or under the folders named."""
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += python_files(p, MAX_FILES)
        elif p.is_file():
            files.append(p)
    files = sorted({f.resolve() for f in files})
    if not files:
        return None, []
    root = project_root(paths)
    return root, [(f, f.relative_to(root).as_posix()) for f in files]


def _scan_one(item) -> tuple:
    path, rel, fixes = item
    try:
        raw = Path(path).read_bytes()
        text = raw.decode("utf-8") if len(raw) <= MAX_FILE_BYTES else None
    except (OSError, UnicodeDecodeError):
        text = None
    if text is None:
        return rel, None, {"findings": [], "cuda_calls": [], "npu_redirect": False, "parses": False}
    return rel, _key(rel, raw, fixes), check_source(rel, text, fixes)


def _key(rel: str, raw: bytes, fixes: bool) -> str:
    return hashlib.sha256(f"{rel}\0{int(fixes)}\0".encode() + raw).hexdigest()


def check_paths(paths: list, jobs: int = 2, cache_dir: Optional[Path] = None, fixes: bool = True) -> CheckResult:
    root, items = _collect(paths)
    if root is None:
        return CheckResult([], 0, 0)
    cache = _Cache(cache_dir) if cache_dir is not None else None
    results, todo = {}, []
    for path, rel in items:
        hit = cache.get(path, rel, fixes) if cache else None
        if hit is not None:
            results[rel] = hit
        else:
            todo.append((path, rel, fixes))
    if len(todo) >= MIN_FILES_FOR_WORKERS and jobs > 1:
        import multiprocessing

        # Big files first, so no worker is left with one large file at the end.
        todo.sort(key=lambda it: -_size(it[0]))
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            scanned = list(progress.track(pool.map(_scan_one, todo, chunksize=4), _SCANNING.format(len(todo)),
                                          len(todo), unit="files"))
    else:
        scanned = [_scan_one(it) for it in progress.track(todo, _SCANNING.format(len(todo)), unit="files")]
    for rel, key, res in scanned:
        results[rel] = res
        if cache is not None and key is not None:
            cache.put(key, res)
    findings = [_finding_from_dict(d) for rel in sorted(results) for d in results[rel]["findings"]]
    calls_by_file = {rel: r.get("imported_calls", []) for rel, r in results.items()}
    for f in findings:      # a structural match's call sites in the files importing its function
        if f.category == "fused_op" and "recognized_by" in f.details and f.locations:
            first = f.locations[0]
            f.locations += [Location(rel, line, fn) for rel, line, fn in
                            matchers.cross_file_call_sites(first.file, first.function, calls_by_file)]
    if not any(r["npu_redirect"] for r in results.values()):
        findings += [build.cuda_calls_finding(rel, [tuple(c) for c in r["cuda_calls"]])
                     for rel, r in sorted(results.items()) if r["cuda_calls"]]
    findings.sort(key=lambda f: (f.locations[0].file, f.locations[0].line, f.rule))
    return CheckResult(findings, len(items), len(items) - len(todo),
                       sorted(rel for rel, r in results.items() if not r["parses"]))


_SCANNING = "scanning {} source files"


def _size(path) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return 0


class _Cache:
    """One JSON file per (path, content) key, under a folder named for the checker's own digest."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / checker_digest()

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, path: Path, rel: str, fixes: bool) -> Optional[dict]:
        try:
            key = _key(rel, Path(path).read_bytes(), fixes)
            return json.loads(self._file(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, key: str, result: dict) -> None:
        target = self._file(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(result), encoding="utf-8")
            os.replace(tmp, target)
        except OSError:
            pass            # a read-only cache only costs the next run its speed


def _finding_from_dict(d: dict) -> Finding:
    fix = d.get("fix")
    return Finding(rule=d["rule"], category=d["category"], title=d["title"], severity=d["severity"],
                   evidence=[Evidence(**e) for e in d.get("evidence") or []],
                   locations=[Location(**l) for l in d.get("locations") or []],
                   estimated_saving_us=d.get("estimated_saving_us"),
                   fix=Fix(**fix) if fix else None, details=d.get("details") or {},
                   predicted=bool(d.get("predicted")), subject=d.get("subject"))


def select(findings: list, select_codes=(), ignore_codes=()) -> list:
    """Ruff-style rule selection: a code or a prefix of codes (`NPA9`, `NPA80`)."""
    def matches(rule, codes):
        return any(rule.upper().startswith(c.strip().upper()) for c in codes if c.strip())

    return [f for f in findings
            if (not select_codes or matches(f.rule, select_codes)) and not matches(f.rule, ignore_codes)]


def at_or_above(findings: list, severity: str) -> list:
    if severity == "none":
        return []
    cut = SEVERITIES.index(severity)
    return [f for f in findings if SEVERITIES.index(f.severity) <= cut]
