"""Test-only rewrite generator (loaded through NPU_ADVISE_GENERATORS): a rewrite of log_train.py's training loop
that changes the training (the whole-run check must reject it)."""
from npu_advise.findings import Finding, Location
from npu_advise.recommendations.codemods.base import Rewrite
from npu_advise.recommendations.registry import source_scanner

OLD, NEW = "lr=0.05)", "lr=0.06)"


@source_scanner("tests.whole_run_wrong", order=99)
def wrong_learning_rate(src, files):
    out = []
    for path in files:
        if path.name != "log_train.py":
            continue
        text = src.text(path)
        line = text[:text.index(OLD)].count("\n") + 1
        rewrite = Rewrite(new_source=text.replace(OLD, NEW, 1), description="test rewrite: another learning rate",
                          auto_applicable=False, needs_verification=["the training is unchanged"])
        f = Finding(rule="NPA599", category="sync", title="whole-run test case", severity="low",
                    locations=[Location(src.rel(path), line, "main")], subject="wrong lr")
        src.attach(f, src.candidate(path, text, rewrite, "rewrites.device_math"))   # a kind the check proves
        out.append(f)
    return out
