"""Score npu-advise against the quality corpus: recall and precision of its findings at exact lines.

    python tests/corpus/score.py                      # profile every script (2 at a time), score
    python tests/corpus/score.py --reuse DIR          # score DIR/<script>/findings.json of an earlier run
    python tests/corpus/score.py --keep DIR           # profile into DIR (kept) instead of a temp folder
    python tests/corpus/score.py --only lane_polyline --only bevdet_lss
    python tests/corpus/score.py --json scores.json   # the same numbers, machine-readable

Ground truth lives in the scripts as trailing comments (format: tests/corpus/README.md). Exit status 1
when precision or recall falls below `floors.json`, 2 when a script could not be profiled.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tokenize
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CORPUS = Path(__file__).resolve().parent
FLOORS = CORPUS / "floors.json"
WINDOW = 2                                     # a finding hits a ground-truth line within +-WINDOW lines
# Context categories describe the run (hot ops, environment, launch density); they are not problems at a
# line, so precision is computed over the others.
CONTEXT_CATEGORIES = frozenset({"op_hotspot", "env", "host_bound"})
ACTIONABLE_CATEGORIES = ("sync", "small_op_loop", "cpu_fallback", "fused_op", "optimizer", "migration")
RECALL_SEVERITIES = frozenset({"high", "medium"})
FIXABLE_CATEGORIES = frozenset({"small_op_loop", "sync"})      # issue 11's fix-coverage measure
SEVERITIES = ("high", "medium", "low")
# What `npu-advise check` (static, no run) can know: with --check only these ground-truth spots count.
STATIC_CATEGORIES = frozenset({"fused_op", "migration", "optimizer"})

_GT_SPEC = re.compile(r"^(?P<cat>[a-z_]+)\s+(?P<sev>high|medium|low)(?:\s+(?P<id>[\w.-]+))?$")
_MARK = re.compile(r"\b(gt|trap):")


@dataclass
class Spot:
    file: str
    line: int
    category: str


@dataclass
class Item:
    """One ground-truth problem; any of its spots (same id) satisfies it."""

    key: str
    severity: str
    spots: list = field(default_factory=list)

    @property
    def categories(self) -> set:
        return {s.category for s in self.spots}

    def where(self) -> str:
        s = self.spots[0]
        return f"{s.file}:{s.line} {'/'.join(sorted(self.categories))}"


@dataclass
class Trap:
    file: str
    line: int
    category: str          # a category, or "any"
    why: str


@dataclass
class Truth:
    script: str
    items: list
    traps: list


class CorpusError(ValueError):
    """A malformed ground-truth comment or an inconsistent script (a bug in the corpus, not the tool)."""


def _comments(path: Path):
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string.lstrip("#").strip()


def parse_marks(text: str) -> list:
    """[(kind, body)] for every `gt:` / `trap:` mark in one comment; a comment may carry several,
    separated by `;` (`gt: fused_op high a; small_op_loop high a`) or by a new mark."""
    out = []
    matches = list(_MARK.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end():end].strip().rstrip(";").strip()
        if m.group(1) == "gt":
            out += [("gt", spec.strip()) for spec in body.split(";") if spec.strip()]
        else:
            out.append(("trap", body))
    return out


def load_truth(script_dir: Path) -> Truth:
    items: dict = {}
    traps = []
    categories = set(ACTIONABLE_CATEGORIES)
    for path in sorted(script_dir.rglob("*.py")):
        rel = path.relative_to(script_dir).as_posix()
        for line, text in _comments(path):
            for kind, body in parse_marks(text):
                if kind == "gt":
                    m = _GT_SPEC.match(body)
                    if not m or m["cat"] not in categories:
                        raise CorpusError(f"{script_dir.name}/{rel}:{line}: bad ground truth {body!r}")
                    key = m["id"] or f"{rel}:{line}:{m['cat']}"
                    item = items.setdefault(key, Item(key, m["sev"]))
                    if SEVERITIES.index(m["sev"]) < SEVERITIES.index(item.severity):
                        item.severity = m["sev"]
                    item.spots.append(Spot(rel, line, m["cat"]))
                else:
                    cat, _, why = body.partition(" ")
                    if cat != "any" and cat not in categories:
                        raise CorpusError(f"{script_dir.name}/{rel}:{line}: bad trap category {cat!r}")
                    traps.append(Trap(rel, line, cat, why.strip()))
    truth = Truth(script_dir.name, list(items.values()), traps)
    for trap in traps:            # one line cannot be both a problem and a trap of the same category
        for item in truth.items:
            for s in item.spots:
                if s.file == trap.file and s.line == trap.line and trap.category in ("any", s.category):
                    raise CorpusError(f"{script_dir.name}/{trap.file}:{trap.line}: trap and ground truth of the "
                                      f"same category on one line")
    return truth


def corpus_scripts(only=None) -> list:
    dirs = sorted(p.parent for p in CORPUS.glob("*/train.py"))
    if only:
        missing = set(only) - {d.name for d in dirs}
        if missing:
            raise CorpusError(f"no corpus script named {', '.join(sorted(missing))}")
        dirs = [d for d in dirs if d.name in only]
    return dirs


# ---------------------------------------------------------------------------------------------------
# Running the tool
# ---------------------------------------------------------------------------------------------------
def _tool() -> list:
    exe = Path(sys.executable).with_name("npu-advise")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "npu_advise.cli"]


def profile_script(script_dir: Path, out_dir: Path, extra=()) -> dict:
    """Run `npu-advise profile train.py` in the script's folder, as a user would. Returns run info."""
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = _tool() + ["profile", "--out", str(out_dir), *extra, "train.py"]
    proc = subprocess.run(cmd, cwd=script_dir, env=env, capture_output=True, text=True, timeout=600)
    (out_dir / "profile.log").write_text(proc.stdout + proc.stderr)
    return {"returncode": proc.returncode, "log": proc.stdout + proc.stderr}


def run_check(script_dir: Path, out_dir: Path) -> dict:
    """The static `npu-advise check .` in the script's folder, as JSON. Scoring then counts only
    STATIC_CATEGORIES ground truth (see static_only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "findings.json"
    proc = subprocess.run(_tool() + ["check", ".", "--format", "json", "-o", str(target), "--fail-on", "none",
                                     "--no-cache", "-j", "1"],
                          cwd=script_dir, capture_output=True, text=True, timeout=600)
    (out_dir / "check.log").write_text(proc.stdout + proc.stderr)
    return {"returncode": 0 if target.exists() else proc.returncode, "log": proc.stdout + proc.stderr}


def profile_all(dirs: list, out_root: Path, jobs: int = 2, mode: str = "profile") -> dict:
    runner = profile_script if mode == "profile" else run_check
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {d.name: pool.submit(runner, d, out_root / d.name) for d in dirs}
        return {name: f.result() for name, f in futures.items()}


# ---------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------
def _rel(path: str, project_root: str | None, script_dir: Path) -> str:
    p = Path(path)
    if p.is_absolute():
        for base in (project_root, str(script_dir)):
            if base:
                try:
                    return p.resolve().relative_to(Path(base).resolve()).as_posix()
                except ValueError:
                    pass
        return p.as_posix()
    return p.as_posix()


def is_verified(finding: dict) -> bool | None:
    """True/False when the finding carries a verification result, None when findings.json has none."""
    fix = finding.get("fix") or {}
    for holder in (finding, fix):
        v = holder.get("verification", holder.get("verified"))
        if v is None:
            continue
        if isinstance(v, bool):
            return v
        if isinstance(v, dict):
            if "verified" in v:
                return bool(v["verified"])
            if "passed" in v:
                return bool(v["passed"])
            status = str(v.get("status", v.get("outcome", ""))).lower()
            return status in ("verified", "passed", "accepted", "ok")
        if isinstance(v, str):
            return v.lower() in ("verified", "passed", "accepted", "ok")
    return None


@dataclass
class ScriptScore:
    script: str
    error: str | None = None
    hits: list = field(default_factory=list)          # (finding, [item keys])
    false_positives: list = field(default_factory=list)   # (finding, trap or None)
    misses: list = field(default_factory=list)        # items (high+medium) not found
    recalled: list = field(default_factory=list)      # items (high+medium) found: (item, [findings])
    unscored: list = field(default_factory=list)      # context / info / unlocated findings


def _finding_str(f: dict, locs) -> str:
    where = ", ".join(f"{fl}:{ln}" for fl, ln in locs) or "-"
    return f"{f['rule']} [{f['severity']}] {f['category']} at {where}: {f['title'][:110]}"


def _nearest_items(truth: Truth, category: str, file: str, line: int) -> list:
    """Keys of the ground-truth items one finding location hits: the nearest same-category spots within
    WINDOW lines, unless a trap of that category is at least as near (a finding on a trap line is false
    even when a real problem is one line away)."""
    best, keys = WINDOW + 1, []
    for it in truth.items:
        for s in it.spots:
            if s.category == category and s.file == file:
                d = abs(s.line - line)
                if d < best:
                    best, keys = d, [it.key]
                elif d == best and it.key not in keys:
                    keys.append(it.key)
    trap_d = min((abs(t.line - line) for t in truth.traps
                  if t.file == file and t.category in ("any", category)), default=WINDOW + 1)
    return keys if best <= WINDOW and best < trap_d else []


def score_script(truth: Truth, findings_doc: dict, script_dir: Path, include_info=False) -> ScriptScore:
    sc = ScriptScore(truth.script)
    root = findings_doc.get("project_root")
    found_by_item: dict = {}
    for f in findings_doc.get("findings", []):
        locs = [(_rel(l["file"], root, script_dir), int(l["line"])) for l in f.get("locations") or []]
        f["_locs"] = locs
        if (f["category"] in CONTEXT_CATEGORIES or not locs
                or (f["severity"] == "info" and not include_info)):
            sc.unscored.append(f)
            continue
        keys = sorted({k for fl, ln in locs for k in _nearest_items(truth, f["category"], fl, ln)})
        if keys:
            sc.hits.append((f, keys))
            for k in keys:
                found_by_item.setdefault(k, []).append(f)
            continue
        trap = next((t for t in truth.traps for fl, ln in locs
                     if t.file == fl and abs(t.line - ln) <= WINDOW and t.category in ("any", f["category"])), None)
        sc.false_positives.append((f, trap))
    for it in truth.items:
        if it.severity not in RECALL_SEVERITIES:
            continue
        if it.key in found_by_item:
            sc.recalled.append((it, found_by_item[it.key]))
        else:
            sc.misses.append(it)
    return sc


def _ratio(a, b):
    return a / b if b else None


def _fmt(r):
    return "  n/a" if r is None else f"{r:5.2f}"


def summarize(scores: list) -> dict:
    cats = {}
    for c in ACTIONABLE_CATEGORIES:
        tp = sum(1 for s in scores for f, _ in s.hits if f["category"] == c)
        fp = sum(1 for s in scores for f, _ in s.false_positives if f["category"] == c)
        # an item with spots of several categories counts under each; under c it is recalled only by a
        # finding of category c
        rec = sum(1 for s in scores for it, fs in s.recalled
                  if c in it.categories and any(f["category"] == c for f in fs))
        miss = sum(1 for s in scores for it in s.misses if c in it.categories) + sum(
            1 for s in scores for it, fs in s.recalled
            if c in it.categories and not any(f["category"] == c for f in fs))
        cats[c] = {"tp": tp, "fp": fp, "precision": _ratio(tp, tp + fp),
                   "recalled": rec, "missed": miss, "recall": _ratio(rec, rec + miss)}
    tp = sum(len(s.hits) for s in scores)
    fp = sum(len(s.false_positives) for s in scores)
    rec = sum(len(s.recalled) for s in scores)
    miss = sum(len(s.misses) for s in scores)
    fixable = [(it, fs) for s in scores for it, fs in s.recalled if it.categories & FIXABLE_CATEGORIES]
    missed_fixable = sum(1 for s in scores for it in s.misses if it.categories & FIXABLE_CATEGORIES)
    fixable_total = len(fixable) + missed_fixable
    auto = sum(1 for it, fs in fixable if any((f.get("fix") or {}).get("auto_applicable") for f in fs))
    verified_flags = [is_verified(f) for it, fs in fixable for f in fs]
    has_verification = any(v is not None for v in verified_flags)
    verified = sum(1 for it, fs in fixable
                   if any((f.get("fix") or {}).get("auto_applicable") and is_verified(f) for f in fs))
    return {
        "precision": _ratio(tp, tp + fp), "recall": _ratio(rec, rec + miss),
        "tp": tp, "fp": fp, "recalled": rec, "missed": miss,
        "trap_hits": sum(1 for s in scores for _, t in s.false_positives if t is not None),
        "categories": cats,
        "fix_coverage": {"items": fixable_total, "auto_applicable": auto,
                         "auto_share": _ratio(auto, fixable_total),
                         "verified_auto": verified if has_verification else None,
                         "verified_share": _ratio(verified, fixable_total) if has_verification else None},
        "errors": {s.script: s.error for s in scores if s.error},
    }


def report(scores: list, summary: dict, out=sys.stdout) -> None:
    w = out.write
    w(f"{'script':28s} {'prec':>5s} {'recall':>6s}  tp fp  hit/all(high+medium)\n")
    for s in scores:
        if s.error:
            w(f"{s.script:28s} ERROR: {s.error}\n")
            continue
        tp, fp = len(s.hits), len(s.false_positives)
        rec, miss = len(s.recalled), len(s.misses)
        w(f"{s.script:28s} {_fmt(_ratio(tp, tp + fp))} {_fmt(_ratio(rec, rec + miss)):>6s} {tp:3d} {fp:2d}  "
          f"{rec}/{rec + miss}\n")
    w("\nper category (precision over located findings of that category; recall over high+medium items "
      "with a spot of that category, found by a finding of that category):\n")
    for c, v in summary["categories"].items():
        w(f"  {c:14s} precision {_fmt(v['precision'])} ({v['tp']} tp, {v['fp']} fp)   "
          f"recall {_fmt(v['recall'])} ({v['recalled']}/{v['recalled'] + v['missed']})\n")
    w(f"\nOVERALL precision {_fmt(summary['precision'])} ({summary['tp']} tp / {summary['tp'] + summary['fp']} "
      f"located actionable findings; op_hotspot/env/host_bound and info-severity findings are not scored)\n")
    w(f"OVERALL recall    {_fmt(summary['recall'])} ({summary['recalled']} of "
      f"{summary['recalled'] + summary['missed']} high+medium ground-truth items, +-{WINDOW} lines, same category)\n")
    w(f"findings on trap lines: {summary['trap_hits']}\n")
    fc = summary["fix_coverage"]
    w(f"fix coverage (issue 11; high+medium loop/sync items): {fc['auto_applicable']}/{fc['items']} "
      f"found with an auto-applicable fix ({_fmt(fc['auto_share']).strip()}); verified: "
      + ("n/a (findings.json has no verification field)" if fc["verified_auto"] is None
         else f"{fc['verified_auto']}/{fc['items']} ({_fmt(fc['verified_share']).strip()})") + "\n")
    w("\nFALSE POSITIVES\n")
    for s in scores:
        for f, trap in s.false_positives:
            tag = f"  [TRAP {trap.category}: {trap.why}]" if trap else ""
            w(f"  {s.script}/{_finding_str(f, f['_locs'])}{tag}\n")
    w("\nMISSES (high+medium ground truth without a finding)\n")
    for s in scores:
        for it in s.misses:
            alts = ", ".join(f"{sp.file}:{sp.line} {sp.category}" for sp in it.spots)
            w(f"  {s.script}: [{it.severity}] {it.key if ':' not in it.key else ''} {alts}\n".replace("  ", " ", 1))
    if summary["errors"]:
        w("\nERRORS\n")
        for name, err in summary["errors"].items():
            w(f"  {name}: {err}\n")


def static_only(truth: Truth) -> Truth:
    """The part of the truth a static `check` can see: spots of STATIC_CATEGORIES only."""
    items = []
    for it in truth.items:
        spots = [s for s in it.spots if s.category in STATIC_CATEGORIES]
        if spots:
            items.append(Item(it.key, it.severity, spots))
    return Truth(truth.script, items, truth.traps)


def score_outputs(dirs: list, out_root: Path, runs: dict | None = None, include_info=False,
                  mode="profile") -> list:
    scores = []
    for d in dirs:
        truth = load_truth(d) if mode == "profile" else static_only(load_truth(d))
        path = out_root / d.name / "findings.json"
        if not path.exists():
            log = (runs or {}).get(d.name, {}).get("log", "")
            tail = log.strip().splitlines()[-1] if log.strip() else "no findings.json"
            scores.append(ScriptScore(d.name, error=f"no findings.json ({tail[:200]})"))
            continue
        scores.append(score_script(truth, json.loads(path.read_text()), d, include_info))
    return scores


def check_floors(summary: dict, floors: dict) -> list:
    failed = []
    for key in ("precision", "recall"):
        if key in floors and (summary[key] is None or summary[key] < floors[key]):
            failed.append(f"{key} {summary[key]} < floor {floors[key]}")
    return failed


def run(only=None, reuse=None, keep=None, jobs=2, mode="profile", include_info=False):
    """(scores, summary) for the corpus: profile into `keep` / a temp dir, or score `reuse`."""
    dirs = corpus_scripts(only)
    if reuse:
        return _finish(dirs, Path(reuse), None, include_info, mode)
    if keep:
        out = Path(keep)
        return _finish(dirs, out, profile_all(dirs, out, jobs, mode), include_info, mode)
    with tempfile.TemporaryDirectory(prefix="npa_corpus_") as tmp:
        return _finish(dirs, Path(tmp), profile_all(dirs, Path(tmp), jobs, mode), include_info, mode)


def _finish(dirs, out, runs, include_info, mode):
    scores = score_outputs(dirs, out, runs, include_info, mode)
    return scores, summarize(scores)


def _jsonable(scores, summary):
    def fd(f):
        return {"rule": f["rule"], "category": f["category"], "severity": f["severity"],
                "locations": [f"{a}:{b}" for a, b in f["_locs"]], "title": f["title"]}
    return {"summary": summary, "scripts": {
        s.script: {"error": s.error,
                   "false_positives": [dict(fd(f), trap=(t.why if t else None)) for f, t in s.false_positives],
                   "misses": [{"key": it.key, "severity": it.severity,
                               "spots": [f"{p.file}:{p.line} {p.category}" for p in it.spots]} for it in s.misses],
                   "hits": [dict(fd(f), items=k) for f, k in s.hits]} for s in scores}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reuse", metavar="DIR", help="score existing outputs DIR/<script>/findings.json")
    ap.add_argument("--keep", metavar="DIR", help="profile into DIR and keep the outputs")
    ap.add_argument("--only", action="append", metavar="SCRIPT", help="score only this corpus script (repeatable)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--check", action="store_true", help="score `npu-advise check` (static rules) instead of profile")
    ap.add_argument("--include-info", action="store_true", help="score info-severity findings too")
    ap.add_argument("--json", metavar="FILE", help="write the scores as JSON")
    ap.add_argument("--no-floors", action="store_true", help="exit 0 whatever the numbers")
    args = ap.parse_args(argv)
    try:
        scores, summary = run(args.only, args.reuse, args.keep, args.jobs, "check" if args.check else "profile",
                              args.include_info)
    except CorpusError as e:
        print(f"corpus error: {e}", file=sys.stderr)
        return 2
    report(scores, summary)
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(scores, summary), indent=1, default=str))
    if summary["errors"]:
        return 2
    if not args.no_floors and not args.only:
        failed = check_floors(summary, json.loads(FLOORS.read_text()))
        if failed:
            print("below floors: " + "; ".join(failed))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
