"""Test-only rewrite generator (loaded through NPU_ADVISE_GENERATORS): candidates for verify_train.py that
the verification stage must reject, report as not swappable, or verify. VERIFY_TEST_CASES (comma-separated)
chooses the cases."""
import os

from npu_advise.findings import Finding, Location
from npu_advise.recommendations.codemods.base import Rewrite
from npu_advise.recommendations.registry import source_scanner

# case -> (function, line as written, line as rewritten)
CASES = {
    "wrong": ("scale", "    return x * 2.0\n", "    return x * 3.0\n"),
    "raises": ("shift", "    return x + 1.0\n", "    return x + x[10 ** 6]\n"),
    "exits": ("absolute", "    return x.abs()\n", "    raise SystemExit(5)\n"),
    "hangs": ("halve", "    return x / 2\n", "    import time; time.sleep(1000); return x / 2\n"),
    "crashes": ("square", "    return x * x\n", "    import os, signal; os.kill(os.getpid(), signal.SIGSEGV)\n"),
    "decorated": ("smooth", "    return x * 0.5 + 0.5\n", "    return (x + 1) * 0.5\n"),
    "closure": ("make_gate.<locals>.gate", "        return torch.where(x > limit, torch.full_like(x, limit), x)\n",
                "        return x.clamp(max=limit)\n"),
    "method": ("Block.forward", "        return torch.relu(super().forward(x))\n",
               "        return super().forward(x).clamp(min=0)\n"),
    "static": ("Block.center", "        return x - x.mean(-1, keepdim=True)\n",
               "        return x - x.sum(-1, keepdim=True) / x.shape[-1]\n"),
    "memo": ("offset", "    return x - 0.25\n", "    return x + (-0.25)\n"),
    "nograd": ("running_scale", "    return x.abs().mean() + 1.0\n", "    return x.abs().sum() / x.numel() + 1.0\n"),
    "needs": ("double", "    return x + x\n", "    return x * 2\n"),
    # a wrong first candidate, then the right one
    "fallback": ("triple", "    return x * 3\n", "    return x * 4\n", "    return x + x + x\n"),
}
# preconditions only the run proves: such a candidate is auto-applicable once verified
NEEDS = {"needs": ["`x` is a tensor (test: only the run proves it)"]}


@source_scanner("tests.verify_cases", order=99)
def verify_cases(src, files):
    wanted = [c for c in os.environ.get("VERIFY_TEST_CASES", "").split(",") if c in CASES]
    out = []
    for path in files:
        if path.name != "verify_train.py":
            continue
        text = src.text(path)
        for case in wanted:
            function, old, *news = CASES[case]
            line = text[:text.index(old)].count("\n") + 1
            made = [src.candidate(path, text, Rewrite(new_source=text.replace(old, new, 1),
                                                      description=f"test rewrite: {case} #{k}", auto_applicable=True,
                                                      needs_verification=list(NEEDS.get(case, []))),
                                  f"tests.{case}{k}") for k, new in enumerate(news)]
            made[0].alternatives = made[1:]
            f = Finding(rule="NPA599", category="small_op_loop", title=f"verification test case {case}",
                        severity="low", locations=[Location(src.rel(path), line, function)], subject=case)
            src.attach(f, made[0])
            out.append(f)
    return out
