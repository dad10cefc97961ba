"""How far the candidate rewrites reach on the quality corpus (issue 11's measure; run by hand, not in CI).

For each corpus script (copied to a temp dir; the corpus is never modified): run it plainly and record its loss
sequence, profile it, and for every high+medium loop or sync finding (NPA501/301/302) with a code fix:
* count it as *proven* when the fix is auto-applicable (its preconditions hold statically);
* else run the script with that one diff applied and count it as *accepted at script level* when it runs and
  its loss sequence stays equal (<= --rtol relative) -- a whole-script stand-in for the verification stage,
  which compares every call of the rewritten function instead;
then apply every proven or accepted fix together, rerun (losses must stay equal), profile again and read
`npu-advise compare`'s host ops per step.

    python benchmarks/bench_rewrites.py [--corpus tests/corpus] [--only NAME ...] [--keep DIR] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOP_SYNC = ("NPA501", "NPA301", "NPA302")


def _apply(diff: str, work: Path) -> bool:
    ok = subprocess.run(["git", "apply", "--check", "-"], input=diff.encode(), cwd=work, capture_output=True)
    if ok.returncode != 0:
        return False
    subprocess.run(["git", "apply", "-"], input=diff.encode(), cwd=work, check=True, capture_output=True)
    return True


def measure(src: Path, root: Path, rtol: float, ac) -> dict:
    base = root / src.name
    work = base / "code"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("__pycache__"))
    res = {"script": src.name}
    rc, out, err = ac.run_plain(work)
    if rc != 0:
        return dict(res, status="error", error="plain run failed")
    losses = ac.loss_sequence(out)
    before = base / "before"
    ac._tool(["profile", "--out", str(before), "train.py"], work)
    if not (before / "findings.json").exists():
        return dict(res, status="error", error="profile failed")
    findings = json.loads((before / "findings.json").read_text())["findings"]
    hm = [f for f in findings if f["rule"] in LOOP_SYNC and f["severity"] in ("high", "medium")]
    rows, accepted = [], []
    checked = {}
    for f in hm:
        fix = f.get("fix") or {}
        row = {"rule": f["rule"], "line": f["locations"][0]["line"] if f["locations"] else None,
               "file": f["locations"][0]["file"] if f["locations"] else None,
               "fix": fix.get("catalog_ref"), "proven": bool(fix.get("auto_applicable")), "accepted": False}
        diff = fix.get("diff")
        if diff and not row["proven"]:
            if diff not in checked:
                copy = base / f"check{len(checked)}"
                shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
                ok = _apply(diff, copy)
                if ok:
                    rc, out, err = ac.run_plain(copy)
                    ok = rc == 0 and ac.losses_equal(losses, ac.loss_sequence(out), rtol)
                    row["why_not"] = None if ok else (f"run failed: {err.strip().splitlines()[-1:]}" if rc else
                                                      "losses differ")
                checked[diff] = (ok, row.get("why_not"))
            row["accepted"], row["why_not"] = checked[diff]
        if diff and (row["proven"] or row["accepted"]):
            accepted.append(diff)
        rows.append(row)
    res["findings"] = rows
    res["hm"] = len(rows)
    res["proven"] = sum(r["proven"] for r in rows)
    res["covered"] = sum(r["proven"] or r["accepted"] for r in rows)
    res["loop_case"] = any(r["rule"] == "NPA501" for r in rows)
    applied = [d for d in dict.fromkeys(accepted) if _apply(d, work)]
    res["applied"] = len(applied)
    if not applied:
        return dict(res, status="nothing applied")
    rc, out, err = ac.run_plain(work)
    if rc != 0:
        return dict(res, status="broken", error=f"patched run failed: {err.strip().splitlines()[-3:]}")
    res["losses_equal"] = ac.losses_equal(losses, ac.loss_sequence(out), rtol)
    after = base / "after"
    ac._tool(["profile", "--out", str(after), "train.py"], work)
    cmp_json = base / "compare.json"
    ac._tool(["compare", str(before), str(after), "--json", str(cmp_json)], work)
    if cmp_json.exists():
        b, a = ac.host_ops_per_step(cmp_json)
        if b:
            res["host_ops_before"], res["host_ops_after"], res["host_ops_cut"] = b, a, 1 - a / b
    res["status"] = "ok" if res["losses_equal"] else "broken"
    return res


def ground_truth_coverage(results: list, dirs: list, root: Path, score) -> dict:
    """The corpus scorer's fix coverage (high+medium loop/sync ground-truth items, missed ones included), with
    a fix proven statically, and proven or accepted at script level."""
    rows = {(r["script"], row["rule"], row["file"], row["line"]): row for r in results for row in r.get("findings", [])}
    items = proven = covered = 0
    for d in dirs:
        doc = root / d.name / "before" / "findings.json"
        if not doc.exists():
            continue
        s = score.score_script(score.load_truth(d), json.loads(doc.read_text()), d)
        items += sum(1 for it in s.misses if it.categories & score.FIXABLE_CATEGORIES)
        for it, fs in s.recalled:
            if not it.categories & score.FIXABLE_CATEGORIES:
                continue
            items += 1
            got = [rows.get((d.name, f["rule"], f["locations"][0]["file"], f["locations"][0]["line"]))
                   or {"proven": bool((f.get("fix") or {}).get("auto_applicable")), "accepted": False} for f in fs]
            proven += any(g["proven"] for g in got)
            covered += any(g["proven"] or g["accepted"] for g in got)
    return {"items": items, "proven": proven, "covered": covered}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(REPO / "tests" / "corpus"))
    ap.add_argument("--only", action="append", metavar="SCRIPT")
    ap.add_argument("--keep", metavar="DIR")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    sys.path.insert(0, args.corpus)
    import apply_check as ac           # the corpus' before/after helpers: plain run, loss sequence, host ops
    import score

    dirs = score.corpus_scripts(args.only)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="npa_rewrites_")
    root = Path(args.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda d: measure(d, root, args.rtol, ac), dirs))
        truth = ground_truth_coverage(results, dirs, root, score)
    finally:
        if tmp:
            tmp.cleanup()
    print(f"{'script':18s} {'status':15s} {'h+m':>4s} {'proven':>6s} {'covered':>7s} {'losses':>7s} {'host ops/step':>22s}")
    for r in results:
        ops = (f"{r['host_ops_before']:.0f} -> {r['host_ops_after']:.0f} ({100 * r['host_ops_cut']:+.0f}%)"
               if r.get("host_ops_before") is not None else "")
        eq = {True: "equal", False: "DIFFER"}.get(r.get("losses_equal"), "-")
        print(f"{r['script']:18s} {r['status']:15s} {r.get('hm', 0):4d} {r.get('proven', 0):6d} {r.get('covered', 0):7d} "
              f"{eq:>7s} {ops:>22s}")
        for row in r.get("findings", []):
            print(f"    {row['rule']} {row['file']}:{row['line']}  {row['fix'] or '-'}"
                  f"{'  proven' if row['proven'] else '  accepted' if row['accepted'] else ''}"
                  f"{'  (' + row['why_not'] + ')' if row.get('why_not') else ''}")
    hm = sum(r.get("hm", 0) for r in results)
    if hm:
        print(f"high+medium loop/sync findings: {hm}; auto-applicable (proven statically): "
              f"{sum(r.get('proven', 0) for r in results)} ({100 * sum(r.get('proven', 0) for r in results) / hm:.0f}%); "
              f"proven or accepted at script level: {sum(r.get('covered', 0) for r in results)} "
              f"({100 * sum(r.get('covered', 0) for r in results) / hm:.0f}%)")
    if truth["items"]:
        print(f"ground-truth high+medium loop/sync items (score.py's fix coverage): {truth['items']}; with a proven fix: "
              f"{truth['proven']} ({100 * truth['proven'] / truth['items']:.0f}%); proven or accepted at script level: "
              f"{truth['covered']} ({100 * truth['covered'] / truth['items']:.0f}%)")
    cuts = [r["host_ops_cut"] for r in results if "host_ops_cut" in r and r.get("loop_case")]
    if cuts:
        print(f"median host-ops cut over {len(cuts)} loop cases with applied fixes: {100 * statistics.median(cuts):.0f}%")
    broken = [r["script"] for r in results if r["status"] == "broken"]
    print(f"scripts broken by applied fixes: {len(broken)}" + (f" ({', '.join(broken)})" if broken else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"scripts": results, "ground_truth": truth}, indent=1))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
