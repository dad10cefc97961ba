"""recommend()'s results reused between runs (recommendations/cache.py): a hit only when the findings, the
trace, the source files and npu-advise's code are all unchanged; equal to recomputing."""
from __future__ import annotations

import shutil

import pytest

import npu_advise.recommendations as recommendations
from conftest import EXAMPLE, marker_line
from npu_advise.analyzers import Context
from npu_advise.findings import Finding, Location
from npu_advise.model import Trace
from npu_advise.recommendations import cache, recommend
from npu_advise.recommendations.codemods.diffs import sha256_text


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(EXAMPLE, root / "train.py")
    return root


def _findings(loop_line: int):
    return [
        Finding("NPA501", "small_op_loop", "loop", "low", locations=[Location("train.py", loop_line, "interpolate")]),
        Finding("NPA401", "cpu_fallback", "logdet", "medium", details={"op": "aten::_linalg_slogdet"},
                locations=[Location("train.py", marker_line(EXAMPLE, "logdet"), "nll_with_covariances")]),
    ]


def _run(root, cache_dir, loop_line=None):
    ctx = Context(project_root=root)
    ctx.findings = _findings(loop_line or marker_line(EXAMPLE, "interpolate-loop") - 2)
    new = recommend(Trace(path=str(root), fmt="kineto", device_type="cpu"), ctx, cache_dir=cache_dir)
    return ctx, new


@pytest.fixture
def computed(monkeypatch):
    """Counts the runs that really computed (cache misses)."""
    calls = []
    real = recommendations._recommend
    monkeypatch.setattr(recommendations, "_recommend", lambda *a: calls.append(1) or real(*a))
    return calls


def _summary(ctx, new):
    return ([(f.fix.diff, f.fix.file_sha256, f.fix.auto_applicable, f.details) for f in ctx.findings],
            [f.to_dict() for f in new],
            {k: (c.function, c.new_source, c.needs_verification) for k, c in ctx.candidates.items()})


def test_second_run_reads_the_cache_and_equals_recomputing(project, tmp_path, computed):
    first = _run(project, tmp_path / "cache")
    again = _run(project, tmp_path / "cache")
    fresh = _run(project, None)
    assert len(computed) == 2                          # the first run and the uncached one
    assert _summary(*first) == _summary(*again) == _summary(*fresh)
    loop = again[0].findings[0]
    assert loop.fix is not None and "torch.arange(1, num_len" in loop.fix.diff
    assert {f.rule for f in again[1]} >= {"NPA801"}    # source-scanner findings come back too
    assert len(list((tmp_path / "cache").rglob("*.pkl"))) == 1


def test_a_changed_source_file_or_finding_recomputes(project, tmp_path, computed, monkeypatch):
    _run(project, tmp_path / "cache")
    (project / "train.py").write_text((project / "train.py").read_text() + "\n# edited\n")
    ctx, _ = _run(project, tmp_path / "cache")
    assert len(computed) == 2
    assert ctx.findings[0].fix.file_sha256 == sha256_text((project / "train.py").read_text())
    _run(project, tmp_path / "cache", loop_line=marker_line(EXAMPLE, "interpolate-loop") - 1)
    assert len(computed) == 3
    # a new file in the project is a miss too (scanners read every project file)
    (project / "model.py").write_text("import torch\n")
    _run(project, tmp_path / "cache")
    assert len(computed) == 4
    assert len(list((tmp_path / "cache").rglob("*.pkl"))) == 4
    monkeypatch.setattr(cache, "MAX_ENTRIES", 2)      # the oldest entries go
    (project / "model.py").write_text("import torch  # v2\n")
    _run(project, tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.pkl"))) == 2


def test_unreadable_entry_is_recomputed_and_no_cache_env_turns_it_off(project, tmp_path, computed, monkeypatch):
    _run(project, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").rglob("*.pkl")
    entry.write_bytes(b"truncated")
    ctx, _ = _run(project, tmp_path / "cache")
    assert len(computed) == 2 and ctx.findings[0].fix.diff
    monkeypatch.setenv(cache.NO_CACHE_ENV, "1")
    assert cache.default_dir() is None
    monkeypatch.setenv(cache.NO_CACHE_ENV, "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_dir() == tmp_path / "xdg" / "npu-advise" / "recommend"
