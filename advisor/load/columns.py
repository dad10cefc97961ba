"""Accumulate decoded trace events into typed columns, one table per role, piece by piece.

Per piece, every step is a C-level loop (`map` + `attrgetter`, `np.fromiter`, `bytes.join`): events
are sorted into roles by their category with one dict lookup each, events of categories nobody
analyzes are dropped before any of their fields are read, and each role extracts only the fields it
needs. Names are int-encoded against a per-role symbol table (a dict), so a million repeats of
"aten::add" cost a million int32s, not strings. Timestamps are converted to integer nanoseconds
exactly (see `ts_ns`).
"""
from __future__ import annotations

from itertools import repeat
from operator import attrgetter, itemgetter

import numpy as np

ROLE_SKIP, ROLE_OP, ROLE_PY, ROLE_RT, ROLE_KERNEL, ROLE_ANNOT, ROLE_META = range(7)
META_CAT = "npa:meta"     # the category metadata events (process names) report to the builder

_cat = attrgetter("cat")
_args = attrgetter("args")
_ts = attrgetter("ts")
_dur = attrgetter("dur")
_name = attrgetter("name")


class Interner(dict):
    """value -> dense int code in first-seen order (dicts keep insertion order: `list(self)` are the
    values by code)."""

    def __missing__(self, key):
        code = self[key] = len(self)
        return code

    def encode(self, values, n: int) -> np.ndarray:
        return np.fromiter(map(self.__getitem__, values), dtype=np.int32, count=n)


def ts_ns(values: list) -> np.ndarray:
    """Chrome-trace µs timestamps -> int64 ns, exactly.

    Integers are exact µs. Fractional values arrive as their JSON text (the decoder's float_hook is
    `str`): a float64 holds only ~0.25 µs at today's epoch (1.7e15 µs), so the integer and fraction
    digits are parsed separately. Anything else (exponents, odd strings) falls back to float64.
    """
    arr = _scalars(values)
    if arr.dtype.kind in "iu":
        if len(arr) and (arr.max() > _MAX_US or arr.min() < -_MAX_US):
            raise OverflowError(_BEYOND)
        return arr.astype(np.int64) * 1000
    if arr.dtype.kind == "f":
        return _float_ns(arr)
    try:
        text = arr.astype("S")
        whole, _, frac = np.strings.partition(text, b".")
        frac = np.strings.ljust(frac.astype("S3"), 3, b"0")
        whole = whole.astype(np.int64)
        if len(whole) and (whole.max() > _MAX_US or whole.min() < -_MAX_US):
            raise OverflowError(_BEYOND)
        ns = whole * 1000
        frac_ns = frac.astype(np.int64)
        return np.where(np.strings.startswith(text, b"-"), ns - frac_ns, ns + frac_ns)
    except (ValueError, TypeError, OverflowError):
        return _float_ns(np.asarray(values, dtype=np.float64))


def json_number(v, default):
    """A JSON value as the loaders read a number: ints and number texts as they are, other scalars as
    floats, anything else (a list, an object, null) as `default`."""
    if isinstance(v, (int, str)) and not isinstance(v, bool):
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _scalars(values: list) -> np.ndarray:
    """One array element per timestamp. The typed decoder lets any JSON value through as a ts; a list or
    object there (or a bool, a null) is read as the loose decoder reads it, so a trace gives the same
    table whichever decoder a piece took."""
    try:
        arr = np.array(values)
    except ValueError:          # lists of different lengths
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iufSU":
        arr = np.array([json_number(v, -1.0) for v in values])
    return arr


# Times and durations must fit int64 ns (up to the year 2262); beyond that a cast would wrap silently.
_MAX_US = np.iinfo(np.int64).max // 1000 - 1
_BEYOND = "a time or duration beyond the year 2262 (int64 ns): not a profiler time"


def _float_ns(us: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):     # an overflow is caught just below
        ns = np.rint(us * 1000.0)
    if len(ns) and not (np.abs(ns) < 9.2e18).all():       # also catches inf and nan
        raise OverflowError(_BEYOND)
    return ns.astype(np.int64)


def dur_ns(values, n: int) -> np.ndarray:
    # Durations are small: float64 is exact to well below 1 ns.
    return _float_ns(np.fromiter(values, dtype=np.float64, count=n))


def _ints(get, objects, n: int) -> np.ndarray:
    try:
        return np.fromiter(map(get, objects), dtype=np.int64, count=n)
    except TypeError:   # None among them (e.g. "Python parent id": null)
        return np.fromiter((-1 if v is None else v for v in map(get, objects)), dtype=np.int64, count=n)


class _Labels:
    """pid/tid columns hold ints or labels ("Spans"); labels get stable negative ids."""

    def __init__(self):
        self.ids: dict = {}

    def column(self, values: list) -> np.ndarray:
        try:
            return np.fromiter(values, dtype=np.int64, count=len(values))
        except (TypeError, ValueError, OverflowError):
            ids = self.ids
            out = np.empty(len(values), dtype=np.int64)
            for i, v in enumerate(values):
                out[i] = v if isinstance(v, int) else ids.setdefault(v, -1000 - len(ids))
            return out


class _Texts:
    """Strings that repeat (shapes, call stacks) share one object; "" becomes None."""

    def __init__(self):
        self.seen: dict = {"": None}

    def column(self, values: list) -> list:
        return list(map(self.seen.setdefault, values, values))

    def raw_column(self, raws: list) -> np.ndarray:
        # One join + one decode + one split instead of a decode per event; JSON text never holds NUL.
        return self.column(b"\x00".join(raws).decode("utf-8", "replace").split("\x00"))


_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1
# Free memory glibc keeps at the top of the heap instead of returning it: with the default (128 kB, fixed
# once the mmap threshold is set) every freed 2 MB piece buffer was given back and the next one faulted
# its pages in again (~0.5 s of page faults on 2.2M events, seen as slow bytes.join); 64 MB keeps them
# for reuse at ~20 MB more peak RSS.
TRIM_THRESHOLD = 64 << 20
_mmap_threshold_fixed = False


def fix_mmap_threshold(nbytes: int = 4 << 20):
    """Have glibc serve every allocation >= nbytes by mmap, and so return it to the OS when freed.

    By default glibc raises this threshold to the size of each large block freed (up to 32 MB): after
    the loader frees its read buffers and pieces, the big column arrays and the numpy temporaries of
    the joins land in the heap, where freed space stays resident. A fixed 4 MB keeps peak RSS near the
    live data for big traces while the 1-2 MB read buffers and pieces are still recycled in the heap
    (at 256 kB every piece was a fresh mmap: 17 % slower on 2.2M events for 6 MB less peak RSS).
    Process-wide and harmless elsewhere; a no-op off glibc.
    """
    global _mmap_threshold_fixed
    if _mmap_threshold_fixed:
        return
    _mmap_threshold_fixed = True
    try:
        import ctypes
        import ctypes.util
        import sys
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes))
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


class _Grow:
    """A numeric column grown in place: `ndarray.resize` reallocs, which for large blocks is an mremap
    (no copy, no second buffer), and untouched capacity costs no resident memory. Concatenating
    per-piece arrays instead left the freed pieces in the malloc heap: twice the columns' size in RSS."""

    __slots__ = ("buf", "n")

    def __init__(self, dtype):
        self.buf = np.empty(0, dtype=dtype)
        self.n = 0

    def append(self, chunk: np.ndarray):
        end = self.n + len(chunk)
        if end > len(self.buf):
            self.buf.resize(max(end, 2 * len(self.buf), 1 << 16), refcheck=False)
        self.buf[self.n:end] = chunk
        self.n = end

    def array(self) -> np.ndarray:
        self.buf.resize(self.n, refcheck=False)
        out, self.buf = self.buf, np.empty(0, dtype=self.buf.dtype)
        return out


class _Objects:
    """An object column (shapes, call stacks): references collected in a list."""

    __slots__ = ("items",)

    def __init__(self):
        self.items: list = []

    def append(self, chunk):
        self.items.extend(chunk)

    def array(self) -> np.ndarray:
        out = np.empty(len(self.items), dtype=object)
        out[:] = self.items
        self.items = []
        return out


_OBJECT_FIELDS = ("input_dims", "call_stack")
_INT32_FIELDS = ("name", "cat")


def _column(field: str):
    if field in _OBJECT_FIELDS:
        return _Objects()
    return _Grow(np.int32 if field in _INT32_FIELDS else np.int64)


class RoleTable:
    """Columns of one role. `fields`: event attributes; `arg_fields`: attributes of `args`."""

    def __init__(self, fields: tuple, arg_fields: tuple):
        self.fields = fields
        self.arg_fields = arg_fields
        self.names = Interner()
        self.cats = Interner()
        self.parts: dict = {f: _column(f) for f in ("ts", "dur", "name") + fields + arg_fields}
        self.n = 0

    def add(self, events, labels: dict, texts: dict):
        p = self.parts
        n = len(events)
        p["ts"].append(ts_ns(list(map(_ts, events))))
        p["dur"].append(dur_ns(map(_dur, events), n))
        p["name"].append(self.names.encode(map(_name, events), n))
        for f in self.fields:
            if f == "cat":
                p[f].append(self.cats.encode(map(_cat, events), n))
            else:
                p[f].append(labels[f].column(list(map(attrgetter(f), events))))
        if self.arg_fields:
            args = list(map(_args, events))
            for f in self.arg_fields:
                if f == "input_dims":
                    p[f].append(texts[f].raw_column(list(map(attrgetter(f), args))))
                elif f == "call_stack":
                    p[f].append(texts[f].column(list(map(attrgetter(f), args))))
                else:
                    p[f].append(_ints(attrgetter(f), args, n))
        self.n += n

    def finish(self) -> dict:
        out = {f: column.array() for f, column in self.parts.items()}
        out["name_values"] = list(self.names)
        out["cat_values"] = list(self.cats)
        out["n"] = self.n
        return out


class ColumnBuilder:
    """Sort each piece's events into role tables; collect `ph == "M"` metadata (process names)."""

    def __init__(self, role_of_cat: dict, roles: dict):
        self.role_of_cat = {**role_of_cat, META_CAT: ROLE_META}   # category -> ROLE_*
        self.tables = {r: RoleTable(*spec) for r, spec in roles.items()}
        self.labels = {"pid": _Labels(), "tid": _Labels()}
        self.texts = {"input_dims": _Texts(), "call_stack": _Texts()}
        self.meta: list = []                      # (kind, pid, name) of metadata events

    def add(self, events: list):
        n = len(events)
        if not n:
            return
        # Events decode to phase-specific structs: only complete events carry their category, metadata
        # events report META_CAT, all others "" (skipped).
        role = np.fromiter(map(self.role_of_cat.get, map(_cat, events), repeat(ROLE_SKIP)), dtype=np.int8,
                           count=n)
        for i in np.flatnonzero(role == ROLE_META):
            e = events[i]
            self.meta.append((e.name, e.pid, e.args.name))
        for r, table in self.tables.items():
            idx = np.flatnonzero(role == r)
            if len(idx) == 0:
                continue
            picked = itemgetter(*idx.tolist())(events) if len(idx) > 1 else (events[int(idx[0])],)
            table.add(picked, self.labels, self.texts)

    def finish(self) -> dict:
        return {r: t.finish() for r, t in self.tables.items()}


# ---- two builders, one table: merging the columns of pieces decoded in another process ------------------

def counts(builder: "ColumnBuilder") -> tuple:
    """Rows per role table and metadata events so far: taken around each piece to know its rows."""
    return tuple(t.n for t in builder.tables.values()) + (len(builder.meta),)


def has_labels(builder: "ColumnBuilder") -> bool:
    """Whether any pid/tid was a text label (ids are given in first-seen order per builder: not mergeable)."""
    return any(lab.ids for lab in builder.labels.values())


def piece_rows(order: list, other_spans: list, n_main: int, k: int) -> np.ndarray:
    """Row order of the merged table `k` (role index; len(roles) = metadata): the pieces in file order,
    `order[i]` the (before, after) counts of a piece this builder took, or None for the other builder's
    next piece (`other_spans`, in its order). Rows of the other builder come after `n_main` rows."""
    spans = []
    it = iter(other_spans)
    for entry in order:
        if entry is None:
            before, after = next(it)
            spans.append((n_main + before[k], n_main + after[k]))
        else:
            spans.append((entry[0][k], entry[1][k]))
    parts = [np.arange(a, b) for a, b in spans if b > a]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def first_seen(codes: np.ndarray, values: list) -> tuple:
    """Re-number interned codes in order of first appearance (what one Interner over the whole file
    gives): (codes, values)."""
    if not len(codes):
        return codes.astype(np.int32), []
    first = np.full(len(values), len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))     # first row of each code (no sort)
    seen = np.argsort(first, kind="stable")[:int((first < len(codes)).sum())]
    rank = np.zeros(len(values), dtype=np.int32)
    rank[seen] = np.arange(len(seen), dtype=np.int32)
    return rank[codes], [values[i] for i in seen]


def merge_role(main: dict, other: dict, rows: np.ndarray) -> dict:
    """One role's columns from both builders, gathered into file order by `rows`."""
    out = {"n": main["n"] + other["n"]}
    for key in ("name", "cat"):
        if key not in main:
            out[key + "_values"] = []
            continue
        values = list(main[key + "_values"])
        index = {v: i for i, v in enumerate(values)}
        remap = np.asarray([index.setdefault(v, len(index)) for v in other[key + "_values"]] or [0], dtype=np.int32)
        values = list(index)
        both = np.concatenate([main[key], remap[other[key]] if other["n"] else other[key]])[rows]
        out[key], out[key + "_values"] = first_seen(both, values)
    for f, col in main.items():
        if f in out or f.endswith("_values") or f == "n":
            continue
        out[f] = np.concatenate([col, other[f]])[rows]
        main[f] = other[f] = None
    return out
