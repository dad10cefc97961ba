"""Before/after check of `npu-advise apply` on the corpus (issue 11's measure; run by hand, not in CI).

For each script: copy its folder to a temp dir (the corpus is never modified), run it plainly and record
the printed loss sequence, profile it, `npu-advise apply` the report, rerun and compare the losses
(<= --rtol relative), profile again and read `npu-advise compare`'s host ops per step.

    python tests/corpus/apply_check.py [--only NAME ...] [--keep DIR] [--rtol 1e-4] [--json FILE]

Exit status 1 when an applied fix broke a script (it crashed, or its losses changed beyond --rtol).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import score  # noqa: E402  (the corpus' scorer: script list, tool path)

_NUMBER = r"[-+]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_FLOAT = re.compile(_NUMBER)
# a `loss` label and the number right after it (`loss 0.5`, `loss=0.5`, `loss: 0.5`), or a `losses` label and the
# run of numbers right after it (`losses 0.5 0.4`, `losses [0.5, 0.4]`); what follows (an elapsed time, another
# metric) is not a loss
_LOSS = re.compile(rf"\b(?:(?P<one>loss)|(?P<many>losses))\b\s*[:=]?\s*"
                   rf"(?:(?(one)(?P<value>{_NUMBER})(?![\w.])|\[?\s*(?P<values>{_NUMBER}(?:[\s,]+{_NUMBER})*)))",
                   re.IGNORECASE)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")


def loss_sequence(stdout: str) -> list:
    """The loss values printed on the script's output lines, in order: the number right after each `loss`
    label, the numbers right after each `losses` label."""
    values = []
    for line in stdout.splitlines():
        if line.startswith("npu-advise"):
            continue
        for m in _LOSS.finditer(line):
            values += [float(m["value"])] if m["value"] else [float(x) for x in _FLOAT.findall(m["values"])]
    return values


def run_plain(workdir: Path) -> tuple:
    proc = subprocess.run([sys.executable, "train.py"], cwd=workdir, env=_env(), capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def _tool(args, cwd):
    return subprocess.run(score._tool() + args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def host_ops_per_step(compare_json: Path) -> tuple:
    data = json.loads(compare_json.read_text())
    row = next((r for r in data["summary"] if r["metric"] == "top-level host ops per step"), None)
    return (row["before"], row["after"]) if row else (None, None)


def losses_equal(a: list, b: list, rtol: float) -> bool:
    if len(a) != len(b) or not a:
        return False
    return all(abs(x - y) <= rtol * max(abs(x), abs(y), 1e-12) or (x != x and y != y) for x, y in zip(a, b))


def classify_applied(src: Path, findings: list, apply_log: str) -> list:
    """For each applied fix: its id and whether its finding hits ground truth, a trap, or neither."""
    truth = score.load_truth(src)
    by_fix = {(f.get("fix") or {}).get("fix_id") or f.get("id"): f for f in findings}
    out = []
    for fix_id in re.findall(r"^(\S+) \S+: applied:", apply_log, re.MULTILINE):
        f = by_fix.get(fix_id)
        if f is None:
            out.append(f"{fix_id}:?")
            continue
        locs = [(l["file"], int(l["line"])) for l in f.get("locations") or []]
        if any(score._nearest_items(truth, f["category"], fl, ln) for fl, ln in locs):
            kind = "truth"
        elif any(t.file == fl and abs(t.line - ln) <= score.WINDOW for t in truth.traps for fl, ln in locs):
            kind = "TRAP"
        else:
            kind = "other"
        out.append(f"{fix_id}:{kind}")
    return out


def check_one(src: Path, root: Path, rtol: float) -> dict:
    work = root / src.name / "code"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("__pycache__"))
    res = {"script": src.name}
    rc, out, err = run_plain(work)
    if rc != 0:
        return dict(res, status="error", error=f"plain run failed: {err.strip().splitlines()[-1:]}")
    before_losses = loss_sequence(out)
    before = root / src.name / "before"
    p = _tool(["profile", "--out", str(before), "train.py"], work)
    if not (before / "findings.json").exists():
        return dict(res, status="error", error=f"profile failed: {(p.stdout + p.stderr).strip()[-300:]}")
    findings = json.loads((before / "findings.json").read_text())["findings"]
    auto = [f for f in findings if (f.get("fix") or {}).get("auto_applicable")]
    res["auto_fixes"] = len(auto)
    a = _tool(["apply", str(before)], work)
    res["apply_rc"] = a.returncode
    res["apply_log"] = (a.stdout + a.stderr).strip()[-2000:]
    res["applied"] = classify_applied(src, findings, res["apply_log"])
    changed = sorted(str(p.relative_to(work)) for p in work.rglob("*.py")
                     if p.read_bytes() != (src / p.relative_to(work)).read_bytes())
    res["changed_files"] = changed
    if not changed:
        return dict(res, status="nothing applied")
    rc, out, err = run_plain(work)
    if rc != 0:
        return dict(res, status="broken", error=f"patched run failed: {err.strip().splitlines()[-3:]}")
    after_losses = loss_sequence(out)
    res["losses_before"], res["losses_after"] = before_losses, after_losses
    res["losses_equal"] = losses_equal(before_losses, after_losses, rtol)
    after = root / src.name / "after"
    _tool(["profile", "--out", str(after), "train.py"], work)
    cmp_json = root / src.name / "compare.json"
    c = _tool(["compare", str(before), str(after), "--json", str(cmp_json)], work)
    if cmp_json.exists():
        b, a_ = host_ops_per_step(cmp_json)
        res["host_ops_before"], res["host_ops_after"] = b, a_
        if b:
            res["host_ops_cut"] = 1 - a_ / b
    else:
        res["compare_error"] = (c.stdout + c.stderr).strip()[-300:]
    res["status"] = "ok" if res["losses_equal"] else "broken"
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", metavar="SCRIPT")
    ap.add_argument("--keep", metavar="DIR", help="keep the copies, profiles and comparisons in DIR")
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    dirs = score.corpus_scripts(args.only)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="npa_apply_")
    root = Path(args.keep or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda d: check_one(d, root, args.rtol), dirs))
    finally:
        if tmp:
            tmp.cleanup()
    print(f"{'script':18s} {'status':16s} {'fixes':>5s} {'losses':>7s} {'host ops/step':>22s}  changed  "
          f"applied fixes (on ground truth / TRAP / other lines)")
    for r in results:
        ops = ""
        if r.get("host_ops_before") is not None:
            ops = f"{r['host_ops_before']:.0f} -> {r['host_ops_after']:.0f} ({-100 * r['host_ops_cut']:+.0f}%)"
        eq = {True: "equal", False: "DIFFER"}.get(r.get("losses_equal"), "-")
        print(f"{r['script']:18s} {r['status']:16s} {r.get('auto_fixes', 0):5d} {eq:>7s} {ops:>22s}  "
              f"{', '.join(r.get('changed_files', []))}  {' '.join(r.get('applied', []))}")
        if r.get("error"):
            print(f"    {r['error']}")
    cuts = [r["host_ops_cut"] for r in results if "host_ops_cut" in r]
    if cuts:
        print(f"median host-ops cut over {len(cuts)} patched scripts: {100 * statistics.median(cuts):.0f}%")
    broken = [r["script"] for r in results if r["status"] == "broken"]
    print(f"scripts broken by applied fixes: {len(broken)}" + (f" ({', '.join(broken)})" if broken else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
