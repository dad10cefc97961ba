"""The collector leaves its own per-call Python frames out of the exported trace (advisor/collect/trim.py),
tested on a real torch.profiler export with frames from a file named like the collector's tracker."""
from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import textwrap

import pytest

from npu_advise.collect import trim

_SCRIPT = textwrap.dedent('''
    import sys, torch
    from torch.profiler import profile, ProfilerActivity
    sys.path.insert(0, sys.argv[2])
    from advisor.collect.placement import root_of      # stands for the tracker called on every torch call

    def user_step(x):
        out = []
        for i in range(3):
            root_of({1: x})
            out.append(x * i)
        return torch.stack(out).sum()

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True) as p:
        user_step(torch.ones(4))
    p.export_chrome_trace(sys.argv[1])
''')


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trim")
    own = tmp_path / "pkg" / "advisor" / "collect"
    own.mkdir(parents=True)
    (own / "placement.py").write_text("def root_of(d):\n    return d.get(1), isinstance(d, dict), id(d)\n")
    script = tmp_path / "user_train.py"
    script.write_text(_SCRIPT)
    raw = tmp_path / "raw.json"
    subprocess.run([sys.executable, str(script), str(raw), str(tmp_path / "pkg")], check=True, capture_output=True)
    return raw


def _trimmed(raw, block=None):
    out = io.BytesIO()
    old, trim.BLOCK = trim.BLOCK, block or trim.BLOCK
    try:
        with open(raw, encoding="utf-8") as src:
            dropped = trim.copy_trimmed(src, out)
    finally:
        trim.BLOCK = old
    return dropped, out.getvalue()


def test_own_frames_and_their_builtins_are_dropped_the_rest_kept_unchanged(raw):
    before = json.loads(raw.read_text())["traceEvents"]
    dropped, data = _trimmed(raw)
    after = json.loads(data)["traceEvents"]
    gone = [e for e in before if e not in after]
    assert dropped == len(gone) == len(before) - len(after)
    names = [e["name"] for e in gone]
    # the tracker's frames (3 calls) and the builtins it called, nothing else
    assert sum("advisor/collect/placement.py" in n and "root_of" in n for n in names) == 3
    assert sum(n.startswith("<built-in method get of dict") for n in names) == 3
    assert sum(n == "<built-in function isinstance>" for n in names) == 3
    assert all("placement.py" in n or n.startswith("<built-in") for n in names)
    kept_py = [e["name"] for e in after if e.get("cat") == "python_function"]
    assert any("user_train.py" in n and "user_step" in n for n in kept_py)
    assert any(n.startswith("<built-in method append of list") for n in kept_py)     # called by user code
    assert not any("collect/placement.py" in n for n in kept_py)
    # every op event is still there, as it was
    ops = [e for e in before if e.get("cat") == "cpu_op"]
    assert ops and all(e in after for e in ops)


def test_events_split_across_read_blocks_give_the_same_file(raw):
    whole = _trimmed(raw)
    for block in (97, 1000, 4096):
        assert _trimmed(raw, block) == whole


def test_a_file_of_another_form_is_copied_as_it_is(tmp_path):
    text = json.dumps({"traceEvents": [{"ph": "X", "cat": "python_function", "name": "x/advisor/collect/"
                                        "placement.py(1): f", "args": {"Python id": 1}}]})
    raw = tmp_path / "other.json"
    raw.write_text(text)
    assert _trimmed(raw) == (0, text.encode())
    with gzip.open(tmp_path / "t.gz", "wb") as dst, open(raw) as src:
        trim.copy_trimmed(src, dst)
    assert gzip.open(tmp_path / "t.gz").read() == text.encode()
