"""The two-process Kineto load (a forked worker decodes part of the pieces) gives exactly the trace a
single process builds, and reports bad input the same way. Real traces from ../shared/data/kineto."""
from __future__ import annotations

import gzip
import json
import sys

import pandas as pd
import pytest

from conftest import SHARED_DATA
from npu_advise.errors import TraceFormatError
from npu_advise.load import jsonstream, kineto
from npu_advise.load.kineto import load_kineto

KINETO = SHARED_DATA / "kineto"
TABLES = ("ops", "python", "runtime", "kernels", "annotations", "steps", "locations")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker is forked (Linux only)")


def _same(a, b):
    for name in TABLES:
        x, y = getattr(a, name), getattr(b, name)
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for c in x.columns:
            assert x[c].dtype == y[c].dtype, (name, c)
            if isinstance(x[c].dtype, pd.CategoricalDtype):
                # same categories in the same (first-seen) order, same codes
                assert list(x[c].cat.categories) == list(y[c].cat.categories), (name, c)
                assert (x[c].cat.codes.to_numpy() == y[c].cat.codes.to_numpy()).all(), (name, c)
            else:
                assert repr(x[c].tolist()) == repr(y[c].tolist()), (name, c)
    for attr in ("metadata", "limitations", "rank", "world_size", "device_type"):
        assert repr(getattr(a, attr)) == repr(getattr(b, attr)), attr


@pytest.mark.parametrize("name,piece_bytes", [("hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz", 256 << 10),
                                              ("hta_amd_mi250_minitoy_train.json.gz", 8 << 10)])
def test_worker_load_equals_single_process_load(name, piece_bytes, monkeypatch):
    # Small pieces: many of them go to the worker, interleaved with the main process's.
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", piece_bytes)
    handed_over = []

    class Counting:                     # counts the pieces checked for (and so sent to) the worker
        def decode(self, piece):
            handed_over.append(len(piece))
            return kineto.msgspec.json.Decoder(list[kineto._Empty]).decode(piece)

    monkeypatch.setattr(kineto, "_check_json", Counting())
    path = str(KINETO / name)
    single = load_kineto(path, parallel=False)
    both = load_kineto(path, parallel=True)
    assert len(handed_over) >= 2 and len(both.ops) > 0 and len(both.kernels) > 0
    _same(single, both)


def test_worker_reports_values_the_columns_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(kineto, "_SHARE", (1, 1))        # every piece to the worker
    with gzip.open(KINETO / "hta_amd_mi250_minitoy_train.json.gz", "rt") as f:
        doc = json.load(f)
    bad = len(doc["traceEvents"]) // 2
    doc["traceEvents"][bad].update({"ts": "12:30", "ph": "X", "cat": "cpu_op"})
    path = tmp_path / "bad_ts.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceFormatError, match="unexpected event values"):
        load_kineto(str(path), parallel=True)


def test_big_traces_only_take_a_worker(tmp_path):
    small = KINETO / "hta_df_index_resolver_v100_rank1.json.gz"
    assert not kineto._worth_a_worker(str(small))        # ~40 MB of JSON: the fork does not pay


def _failing_in_the_worker(how: str):
    import os
    parent = os.getpid()
    decode = kineto._decode_piece

    def decode_piece(data):
        if os.getpid() != parent:          # only in the forked worker
            if how == "exit":
                os._exit(7)                # dies without a word
            raise RuntimeError("boom in the worker")
        return decode(data)
    return decode_piece


@pytest.mark.parametrize("how,message", [("raise", "boom in the worker"), ("exit", "worker process died")])
def test_a_failing_worker_is_a_format_error_not_a_hang(how, message, monkeypatch):
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(kineto, "_decode_piece", _failing_in_the_worker(how))
    with pytest.raises(TraceFormatError, match=message):
        load_kineto(str(KINETO / "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz"), parallel=True)
