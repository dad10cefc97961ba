"""The recommender: turns findings into changes a user can accept, and finds fused-op and migration
opportunities in the source the profile points at.

`recommend(trace, ctx)` runs after every analyzer. It
* gives analyzer findings without a fix one (mutating `finding.fix`) from the registered fix
  generators: vectorized loop rewrites (NPA501), CPU-fallback replacements (NPA401), fused optimizers
  (NPA601), ...;
* returns new findings from the registered source scanners: mx_driving fused ops (NPA8xx) and migration
  steps at the entry point (NPA9xx);
* leaves the code rewrites, `Candidate`s, in `ctx.candidates` (finding id -> Candidate) for the
  verification stage.
Generators and scanners live in `recommendations/generators/`, one module per family; how to add one is
in `registry.py`.

Every code change is a libcst transform (recommendations/codemods) shown as a unified diff against the
file as it is on disk, with the SHA-256 of the content before and after (so `apply` refuses a changed
file and recognizes an applied fix). A fix is auto-applicable only when its preconditions were verified
from the source and the recorded shapes; `Finding.details["fix_requires"]` lists the packages the new
code imports (torch_npu, mx_driving), which exist only on an NPU machine.
"""
from __future__ import annotations

from npu_advise.findings import Finding

# No libcst here: detection (matchers.py, dispatch.py) reads Python's `ast`; the codemods (recommendations/
# codemods, libcst) are imported where a match is rewritten, so a trace without source locations is analyzed
# without the parser (~0.7 s of imports). entry.py and rule_docs.py document the NPA8xx/NPA9xx rules without it.
from . import entry, registry, rewrite_docs, rule_docs  # noqa: F401  (register the NPA8xx/NPA9xx rules, the rewrite docs)
from .candidates import Candidate
from .codemods.scope import analysis_scope
from .evidence import SourceIndex
from .sources import Sources, project_root


def recommend(trace, ctx, cache_dir=None) -> list:
    """With `cache_dir` (cache.default_dir()), the results of an earlier run on the same findings, trace,
    source files and npu-advise code are reused (cache.py)."""
    root = project_root(trace, ctx)
    index = SourceIndex(trace, root)
    src = Sources(root, trace, index)
    k = None
    if cache_dir is not None:
        from . import cache, entry
        files = index.files() + src.project_files() + [
            p for g in entry.LAUNCH_SCRIPT_GLOBS for p in (sorted(root.glob(g)) if root is not None else [])]
        k = cache.key(trace, ctx.findings, root, files)
        hit = cache.load(cache_dir, k)
        if hit is not None and len(hit[0]) == len(ctx.findings):
            for finding, (fix, details) in zip(ctx.findings, hit[0]):
                finding.fix, finding.details = fix, details
            ctx.candidates = hit[2]
            return hit[1]
    # Every file is parsed and its metadata resolved at most once per call, whatever number of matchers and
    # codemods look at it.
    with analysis_scope():
        new = _recommend(src, index, ctx)
    if k is not None:
        cache.store(cache_dir, k, ([(f.fix, f.details) for f in ctx.findings], new, ctx.candidates))
    return new


def _recommend(src: Sources, index: SourceIndex, ctx) -> list:
    for finding in ctx.findings:
        try:
            _attach_fix(finding, src)
        except Exception as e:  # one unparsable file must not lose the whole report
            finding.details.setdefault("fix_error", f"{type(e).__name__}: {e}")
    scanned = index.files() or src.project_files()
    new = []
    for scanner in registry.scanners():
        new += scanner.scan(src, scanned)
    from .build import loop_fused_severity
    loop_fused_severity(new, ctx.findings, src.resolve)
    for finding in list(ctx.findings) + new:
        _state_requirements(finding)
    ctx.candidates = src.candidates
    return new


def _attach_fix(finding: Finding, src: Sources) -> None:
    """The first Candidate of the generators for the finding's rule becomes its fix; else the first advice."""
    if finding.fix is not None or not finding.locations:
        return
    advice = None
    for generator in registry.generators(finding.rule):
        made = generator.make(finding, src)
        if isinstance(made, Candidate):
            src.attach(finding, made)
            return
        if made is not None and advice is None:
            advice = made
    if advice is not None:
        finding.fix = advice


def _state_requirements(finding: Finding) -> None:
    """Say in the fix's constraints (which the report shows) which NPU-only packages its new code imports."""
    needs = [p for p in finding.details.get("fix_requires") or [] if p]
    fix = finding.fix
    if not needs or fix is None:
        return
    missing = [p for p in needs if not any(f"needs {p} " in c or c.startswith(f"requires {p}") for c in fix.constraints)]
    if missing:
        fix.constraints = list(fix.constraints) + [
            f"requires {', '.join(missing)}: the new code imports {'them' if len(missing) > 1 else 'it'}, and "
            f"{'they exist' if len(missing) > 1 else 'it exists'} only on an Ascend NPU machine"]
