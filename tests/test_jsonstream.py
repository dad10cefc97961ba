"""The chunked event-array reader: tiny pieces, cuts inside nested objects and strings, same result."""
from __future__ import annotations

import gzip
import json

import msgspec
import pandas as pd
import pytest

from conftest import SHARED_DATA
from npu_advise.errors import TraceFormatError
from npu_advise.load import jsonstream
from npu_advise.load.kineto import load_kineto

KINETO = SHARED_DATA / "kineto"
REAL = KINETO / "hta_critical_path_alexnet_a100_cudasync.json.gz"


def _events(path, monkeypatch=None, chunk=None, block=None) -> tuple:
    """All events as plain dicts through ChunkedArray, the number of pieces, and the header."""
    if chunk:
        monkeypatch.setattr(jsonstream, "CHUNK_BYTES", chunk)
    if block:
        monkeypatch.setattr(jsonstream, "BLOCK_BYTES", block)
        monkeypatch.setattr(jsonstream, "READ_BYTES", block)
    reader = jsonstream.ChunkedArray(str(path), msgspec.json.Decoder().decode)
    pieces = list(reader)
    return [e for piece in pieces for e in piece], len(pieces), reader.header


def _nested_trace(tmp_path):
    """The real AlexNet trace, every event given args with nested objects and strings full of
    `}, {` and `]`, so that event-boundary candidates fall inside objects and strings."""
    with gzip.open(REAL, "rt") as f:
        doc = json.load(f)
    for i, e in enumerate(doc["traceEvents"]):
        e.setdefault("args", {})["nested"] = [{"a": i}, {"b": "}, {\"c\": 1}, {"}, {"d": [{"e": "]"}, {}]}]
    path = tmp_path / "nested.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(doc, f, indent=1)
    return path, doc


@pytest.mark.parametrize("chunk,block", [(300, 64), (1000, 1 << 10), (4096, 700), (1 << 16, 1 << 14)])
def test_tiny_pieces_give_the_same_events(tmp_path, monkeypatch, chunk, block):
    path, doc = _nested_trace(tmp_path)
    events, n_pieces, header = _events(path, monkeypatch, chunk, block)
    assert n_pieces > (20 if chunk < 5000 else 5)
    assert events == doc["traceEvents"]
    assert header == {k: v for k, v in doc.items() if k != "traceEvents"}


def test_tiny_pieces_give_the_same_trace(tmp_path, monkeypatch):
    path, _ = _nested_trace(tmp_path)
    whole = load_kineto(str(path))
    assert len(whole.ops) > 300
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", 500)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 128)
    monkeypatch.setattr(jsonstream, "READ_BYTES", 128)
    pieces = load_kineto(str(path))
    for table in ("ops", "runtime", "kernels", "annotations", "steps"):
        pd.testing.assert_frame_equal(getattr(whole, table), getattr(pieces, table), obj=table)
    assert whole.rank == pieces.rank == 0


def test_real_trace_in_many_pieces(monkeypatch):
    big = KINETO / "hta_nccl_data_a100_ddp_rank0.json.gz"
    whole = load_kineto(str(big))
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 16 << 10)
    pieces = load_kineto(str(big))
    for table in ("ops", "runtime", "kernels", "annotations", "steps"):
        pd.testing.assert_frame_equal(getattr(whole, table), getattr(pieces, table), obj=table)


def test_multi_member_gzip(tmp_path, monkeypatch):
    text = gzip.decompress(REAL.read_bytes())
    half = len(text) // 2
    path = tmp_path / "two_members.json.gz"
    path.write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
    with gzip.open(REAL, "rt") as f:
        doc = json.load(f)
    events, _, _ = _events(path, monkeypatch, 4096, 1024)
    assert events == doc["traceEvents"]


def test_truncated_in_every_region_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 512)
    text = gzip.decompress(REAL.read_bytes())
    for frac in (0.001, 0.3, 0.7, 0.999):
        path = tmp_path / f"cut{frac}.json"
        path.write_bytes(text[: int(len(text) * frac)])
        with pytest.raises(TraceFormatError):
            list(jsonstream.ChunkedArray(str(path), msgspec.json.Decoder().decode))


def test_corrupt_byte_mid_file_fails_fast_instead_of_growing_the_piece(tmp_path, monkeypatch):
    # A broken event is not a bad cut: the reader must not keep growing the piece to the end of file.
    monkeypatch.setattr(jsonstream, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(jsonstream, "BLOCK_BYTES", 1024)
    text = gzip.decompress(REAL.read_bytes())
    mid = text.index(b'"ph"', len(text) // 3)
    path = tmp_path / "corrupt.json"
    path.write_bytes(text[:mid] + b"@" + text[mid:])
    seen = []
    with pytest.raises(TraceFormatError, match="corrupt JSON"):
        for piece in jsonstream.ChunkedArray(str(path), msgspec.json.Decoder().decode):
            seen.append(len(piece))
    assert 0 < sum(seen) < len(json.loads(text)["traceEvents"])


def test_values_the_columns_cannot_hold_are_a_format_error(tmp_path):
    with gzip.open(REAL, "rt") as f:
        doc = json.load(f)
    doc["traceEvents"][5]["ts"] = "12:30"
    doc["traceEvents"][5]["ph"] = "X"
    doc["traceEvents"][5]["cat"] = "cpu_op"
    path = tmp_path / "bad_ts.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TraceFormatError, match="unexpected event values"):
        load_kineto(str(path))
