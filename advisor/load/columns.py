"""Accumulate decoded trace events into typed columns, piece by piece.

Per piece: one `astuple` per event and `zip(*...)` turn structs into columns at C speed; events of
categories nobody analyzes are dropped before their args are touched; names are int-encoded against a
global symbol table so a million repeats of "aten::add" cost a million int32s, not strings.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from msgspec.structs import astuple


class SymbolTable:
    def __init__(self):
        self.ids: dict = {}
        self.names: list = []

    def encode(self, values) -> np.ndarray:
        codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
        mapping = np.fromiter((self.ids.setdefault(u, len(self.ids)) for u in uniques), dtype=np.int32,
                              count=len(uniques))
        if len(self.names) < len(self.ids):
            self.names.extend([None] * (len(self.ids) - len(self.names)))
            for u, i in zip(uniques, mapping):
                self.names[i] = u
        return mapping[codes] if len(codes) else np.zeros(0, dtype=np.int32)

    def categorical(self, codes: np.ndarray) -> pd.Categorical:
        return pd.Categorical.from_codes(codes, categories=pd.Index(self.names, dtype=object))


def _int_column(values) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return np.asarray(values, dtype=object)


def _ns(values) -> np.ndarray:
    # Chrome traces count µs; fractional parts carry ns. float64 keeps ~0.25 µs at today's epochs.
    return np.rint(np.asarray(values, dtype=np.float64) * 1000.0).astype(np.int64)


class ColumnBuilder:
    FIELDS = ("ph", "cat", "name", "ts", "dur", "pid", "tid")
    ARG_FIELDS = ("external_id", "correlation", "python_id", "python_parent_id", "input_dims", "stream",
                  "device", "seq", "call_stack", "name")

    def __init__(self):
        self.names = SymbolTable()
        self.cats = SymbolTable()
        self.parts: dict = {k: [] for k in ("ph", "cat", "name", "ts", "dur", "pid", "tid", "external_id",
                                           "correlation", "python_id", "python_parent_id", "input_dims",
                                           "stream", "device", "seq", "call_stack")}

    def add(self, events: list, keep_cats: set, meta_names: list):
        if not events:
            return
        ph, cat, name, ts, dur, pid, tid, args = zip(*[astuple(e) for e in events])
        for i in np.flatnonzero(np.asarray(ph, dtype=object) == "M"):
            a = args[i]
            if a is not None:
                meta_names.append((name[i], pid[i], a.name))
        cat_arr = np.asarray(cat, dtype=object)
        cat_codes, cat_uniques = pd.factorize(cat_arr)
        wanted = np.fromiter((c in keep_cats for c in cat_uniques), dtype=bool, count=len(cat_uniques))
        keep = np.flatnonzero(wanted[cat_codes] if len(cat_uniques) else np.zeros(len(cat_arr), bool))
        if len(keep) == 0:
            return
        take = keep.tolist()
        p = self.parts
        p["ph"].append(np.asarray(ph, dtype=object)[keep])
        p["cat"].append(self.cats.encode(cat_arr[keep]))
        p["name"].append(self.names.encode([name[i] for i in take]))
        p["ts"].append(_ns([ts[i] for i in take]))
        p["dur"].append(_ns([dur[i] for i in take]))
        p["pid"].append(_int_column([pid[i] for i in take]))
        p["tid"].append(_int_column([tid[i] for i in take]))
        from .kineto import _NO_ARGS
        (ext, corr, py_id, py_parent, dims, stream, device, seq, stack, _m) = zip(
            *[astuple(args[i] or _NO_ARGS) for i in take])
        p["external_id"].append(np.asarray(ext, dtype=np.int64))
        p["correlation"].append(np.asarray(corr, dtype=np.int64))
        p["python_id"].append(np.asarray(py_id, dtype=np.int64))
        p["python_parent_id"].append(np.asarray([-1 if v is None else v for v in py_parent], dtype=np.int64))
        p["input_dims"].append(np.asarray([bytes(r).decode() if len(r) else None for r in dims], dtype=object))
        p["stream"].append(np.asarray(stream, dtype=np.int64))
        p["device"].append(np.asarray(device, dtype=np.int64))
        p["seq"].append(np.asarray(seq, dtype=np.int64))
        p["call_stack"].append(np.asarray([s or None for s in stack], dtype=object))

    def finish(self) -> dict:
        out = {}
        for k, chunks in self.parts.items():
            if not chunks:
                out[k] = np.zeros(0, dtype=object if k in ("ph", "input_dims", "call_stack") else np.int64)
                continue
            if any(c.dtype == object for c in chunks) and k in ("pid", "tid"):
                chunks = [c.astype(object) for c in chunks]
            out[k] = np.concatenate(chunks)
        out["name"] = self.names.categorical(out["name"].astype(np.int32))
        out["cat"] = self.cats.categorical(out["cat"].astype(np.int32))
        out["n"] = len(out["ts"])
        return out
