"""`npu-advise profile`: the real CLI running real scripts in a child process under torch.profiler."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLE, SCRIPTS, marker_line, read_json, run_cli

MODES = SCRIPTS / "profile_modes.py"


def _one_line_error(proc) -> str:
    """The tool's own error line (the script's traceback may precede it); never a tool traceback."""
    lines = [l for l in proc.stderr.splitlines() if l.startswith("npu-advise: error:")]
    assert len(lines) == 1, proc.stderr
    frames = [l for l in proc.stderr.splitlines() if l.startswith("  File ")]
    assert not any("advisor" in f or "npu_advise" in f or "runpy" in f for f in frames), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "out"
    proc = run_cli("profile", "--out", out, EXAMPLE, "--epochs", "1")
    return proc, out


def test_example_output_is_the_scripts_own_without_profiler_log_lines(example_run):
    from npu_advise.collect.output_relay import PROFILER_LOG_LINE

    proc, out = example_run
    # the example prints every 4th step; it was stopped in step 4, before that step's print
    assert [l.rsplit(" ", 1)[0] for l in proc.stdout.splitlines() if l.startswith("epoch")] == ["epoch 0 step 0/8 loss"]
    leaked = [l for l in (proc.stdout + proc.stderr).splitlines() if PROFILER_LOG_LINE.match(l.encode())]
    assert not leaked and "USDT:" not in proc.stderr
    kept = (out / "profiler.log").read_text().splitlines()
    assert kept and all(PROFILER_LOG_LINE.match(l.encode()) for l in kept) and "profiler_start" in kept[0]


def test_example_profile_writes_trace_collection_and_findings(example_run):
    proc, out = example_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    trace = out / "trace" / "rank0.pt.trace.json.gz"
    assert trace.is_file()
    collection = read_json(out / "collection.json")
    assert collection["device"] == "cpu"
    assert collection["steps_recorded"] == 3
    assert collection["schedule"] == {"wait": 1, "warmup": 1, "active": 3}
    # the example runs 8 steps per epoch; the collector stopped it after 1 + 1 + 3
    assert collection["stopped_early"] is True and collection["outcome"] == "stopped"
    assert collection["steps_seen"] == 5
    assert "epoch 0 done" not in proc.stdout
    assert collection["args"] == ["--epochs", "1"]
    assert (out / "findings.json").is_file()
    assert "report: " in proc.stdout and str(out / "report.html") in proc.stdout
    # progress went to the terminal
    assert "step 3/3 recorded" in proc.stderr


def test_analyze_of_a_profile_output_folder_matches_profile(example_run, tmp_path):
    """`analyze <out>` reads the traces under trace/ (not collection.json or findings.json), takes the
    collection record and the script's folder as project root, like `profile` itself did."""
    _, out = example_run
    proc = run_cli("analyze", out, "--out", tmp_path / "again")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again = read_json(out / "findings.json"), read_json(tmp_path / "again" / "findings.json")
    assert again["collection"]["script"] == str(EXAMPLE)
    assert again["project_root"] == str(EXAMPLE.parent)
    assert [f["id"] for f in again["findings"]] == [f["id"] for f in first["findings"]]


def test_example_trace_carries_record_and_steps(example_run):
    _, out = example_run
    with gzip.open(out / "trace" / "rank0.pt.trace.json.gz", "rt") as f:
        doc = json.load(f)
    record = doc["npu_advise"]
    assert record["rank"] == 0 and record["world_size"] == 1 and record["device"] == "cpu"
    assert record["versions"]["torch"].startswith("2.")
    # every watched variable is recorded, None when unset, so the env analyzer can judge it
    assert "TASK_QUEUE_ENABLE" in record["env"] and "ASCEND_LAUNCH_BLOCKING" in record["env"]
    steps = sorted(e["name"] for e in doc["traceEvents"] if e.get("name", "").startswith("ProfilerStep#"))
    assert steps == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]
    # the collector's per-call frames are left out (collect/trim.py); the script's own frames are kept
    frames = [e["name"] for e in doc["traceEvents"] if e.get("cat") == "python_function"]
    assert any("train.py" in n for n in frames)
    assert not any("collect/placement.py" in n or "collect/source_marks.py" in n for n in frames)


def test_example_ops_attributed_to_exact_lines(example_run):
    from npu_advise.load import load_kineto_file

    _, out = example_run
    trace = load_kineto_file(out / "trace" / "rank0.pt.trace.json.gz")
    ops, locs = trace.ops, trace.locations
    located = ops[ops["loc"] >= 0]
    where = locs.iloc[located["loc"].to_numpy()]
    names = located["name"].astype(str).to_numpy()
    files = where["file"].to_numpy()
    lines = where["line"].to_numpy()
    exact = where["exact"].to_numpy()
    example = str(EXAMPLE.resolve())

    def lines_of(op):
        sel = (names == op) & (files == example) & exact
        return set(int(x) for x in lines[sel])

    # loss.item() once per recorded step, on the marked line
    item_line = marker_line(EXAMPLE, "item-sync")
    scalar = (names == "aten::_local_scalar_dense") & (files == example) & (lines == item_line)
    assert scalar.sum() == 3
    # the valid_len loop's implicit .item(): once per lane per step (2 samples x 6 lanes x 3 steps)
    vl_line = marker_line(EXAMPLE, "valid-len-mask")
    assert ((names == "aten::_local_scalar_dense") & (lines == vl_line)).sum() == 36
    assert marker_line(EXAMPLE, "logdet") in lines_of("aten::logdet")
    assert marker_line(EXAMPLE, "maxpool") + 0 not in lines_of("aten::max_pool2d")  # defined, not called, there
    assert marker_line(EXAMPLE, "msda") not in lines_of("aten::grid_sampler_2d")    # inside the called function
    assert lines_of("aten::grid_sampler_2d")                                         # ...on its F.grid_sample line
    assert marker_line(EXAMPLE, "add-relu") in lines_of("aten::add_")
    assert marker_line(EXAMPLE, "interpolate-loop") in lines_of("aten::copy_")


def test_script_sees_plain_python_argv_cwd_and_path_and_no_stop_lets_it_finish(tmp_path):
    import subprocess

    plain = tmp_path / "plain.json"
    prof = tmp_path / "profiled.json"
    work = tmp_path / "work"
    work.mkdir()
    args = ["ok", "--steps", "6", "-x", "--weird=1", "positional", "--epochs", "1"]
    subprocess.run([sys.executable, str(MODES), *args, "--dump", str(plain)], cwd=work, check=True,
                   capture_output=True)
    out = tmp_path / "out"
    proc = run_cli("profile", "--out", out, "--no-stop", "--wait", "0", "--warmup", "0", "--active", "2",
                   MODES, *args, "--dump", prof, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen, expected = read_json(prof), read_json(plain)
    assert seen["argv"][-1] == str(prof) and expected["argv"][-1] == str(plain)
    seen["argv"][-1] = expected["argv"][-1] = "DUMP"
    assert seen == expected
    assert seen["argv"][1:-1] == [*args, "--dump"] and seen["name"] == "__main__"
    assert seen["cwd"] == str(work) and seen["path0"] == str(MODES.parent.resolve())
    # --no-stop: the script ran all its 6 steps; 2 were recorded
    collection = read_json(out / "collection.json")
    assert collection["outcome"] == "completed" and collection["stopped_early"] is False
    assert collection["steps_seen"] == 6 and collection["steps_recorded"] == 2
    assert collection["cwd"] == str(work)


def test_missing_script(tmp_path):
    proc = run_cli("profile", "--out", tmp_path / "out", tmp_path / "nope.py")
    assert proc.returncode != 0
    assert "nope.py: no such file" in _one_line_error(proc)
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode, expected", [
    ("raise-before", "failed before the first profiled step: ValueError: bad config: lr must be positive"),
    ("exit3-before", "exited with status 3 (sys.exit) before the first profiled step"),
    ("osexit-before", "called os._exit(5) before the first profiled step"),
])
def test_script_failing_before_profiling(tmp_path, mode, expected):
    out = tmp_path / "out"
    proc = run_cli("profile", "--out", out, MODES, mode)
    assert proc.returncode == 2
    assert expected in _one_line_error(proc)
    assert not (out / "findings.json").exists()
    collection = read_json(out / "collection.json")
    assert collection["steps_recorded"] == 0 and collection["exported"] is False
    if mode == "raise-before":
        # the script's own traceback is shown as python would, starting at the script
        assert "ValueError: bad config" in proc.stderr
        assert "bootstrap.py" not in proc.stderr


def test_script_failing_after_two_profiled_steps_still_reports(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("profile", "--out", out, MODES, "raise-after2")
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "failed after 2 profiled steps: RuntimeError: CUDA out of memory (simulated)" in line
    assert str(out / "report.html") in line
    assert (out / "trace" / "rank0.pt.trace.json.gz").is_file()
    findings = read_json(out / "findings.json")
    assert any("failed after 2 profiled steps" in l for l in findings["limitations"])
    assert findings["collection"]["outcome"] == "exception"
    assert findings["collection"]["steps_recorded"] == 2
    assert findings["trace"]["steps"][:2] == [2, 3]


def test_no_optimizer_step_gets_a_clear_message(tmp_path):
    proc = run_cli("profile", "--out", tmp_path / "out", MODES, "no-optimizer")
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert "without calling optimizer.step()" in line and "--window-seconds" in line


def test_window_seconds_profiles_a_script_without_optimizer(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("profile", "--out", out, "--window-seconds", "1", MODES, "no-optimizer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    collection = read_json(out / "collection.json")
    assert collection["mode"] == "window" and collection["window_seconds"] == 1.0
    # stopped after about 1 s of a 3 s loop (the recorded span below; wall time swings with machine load)
    assert collection["stopped_early"] is True
    with gzip.open(out / "trace" / "rank0.pt.trace.json.gz", "rt") as f:
        events = json.load(f)["traceEvents"]
    scalar = [e for e in events if e.get("name") == "aten::_local_scalar_dense"]
    assert len(scalar) > 10
    span_us = max(e["ts"] + e.get("dur", 0) for e in scalar) - min(e["ts"] for e in scalar)
    assert 0.5e6 < span_us < 2.0e6
    assert (out / "findings.json").is_file()


def test_swallowed_stop_still_ends_the_script(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("profile", "--out", out, MODES, "swallow-stop", "--steps", "12")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "swallowed SystemExit" in proc.stdout
    assert "reached the end" not in proc.stdout
    assert read_json(out / "collection.json")["stopped_early"] is True


def test_python_option_errors(tmp_path):
    proc = run_cli("profile", "--out", tmp_path / "o1", "--python", tmp_path / "no-python", MODES, "ok")
    assert proc.returncode == 2
    assert "no-python: interpreter not found" in _one_line_error(proc)


def test_python_option_runs_another_interpreter(tmp_path):
    """The venv's base interpreter has neither npu-advise nor (usually) torch: the bootstrap still runs
    there (npu-advise is made importable for it) and reports the missing torch in one line."""
    import os
    import subprocess

    base = os.path.realpath(sys.executable)
    if base == os.path.abspath(sys.executable):
        pytest.skip("not running in a virtual environment: no second interpreter at hand")
    if subprocess.run([base, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("the base interpreter has torch too")
    proc = run_cli("profile", "--out", tmp_path / "o2", "--python", base, MODES, "ok")
    assert proc.returncode == 2
    assert f"{base} cannot import torch" in _one_line_error(proc)


def test_script_ending_inside_the_active_window_reports_the_steps_it_had(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("profile", "--out", out, MODES, "ok", "--steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished after 1 profiled step of the 3 requested" in proc.stderr
    findings = read_json(out / "findings.json")
    assert findings["collection"]["outcome"] == "completed" and findings["collection"]["steps_recorded"] == 1
    assert any("1 profiled step of the 3 requested" in l for l in findings["limitations"])
