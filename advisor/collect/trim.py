"""Leave the collector's own per-call Python frames out of the exported trace.

With `with_stack=True` torch's Python tracer records every Python call, including the collector's
`__torch_function__` hook and the placement tracker it calls on every torch call, and each builtin those
call (`dict.get`, `isinstance`, `id`, ...). On the bundled example that is 290k of the trace's 397k events:
the trace is 2.5x larger and slower to load, and none of it is the user's program (the loader counts
these frames as library code anyway). The hook's frames, and the builtins called directly from a dropped
frame, are dropped; everything else is copied unchanged, byte for byte: torch ops issued inside the hook
stay (they are timed against the user frames and the `npa.src:` markers around them), and so do library
Python frames under the hook (torch's own Python functions).

Works on the text torch's Kineto exporter writes (one event per `  {` ... `  }` block, in the order the
events were recorded, a Python frame after its parent). A file not in that form is copied as it is.
"""
from __future__ import annotations

import re

# Files whose frames run inside every torch call while the profiler records (the mode and the tracker).
OWN_PER_CALL_FILES = ("collect/source_marks.py", "collect/placement.py")
_EVENT_START = "\n  {\n"
# One python_function event's block with its leading separator, up to its closing "  },"
_PY_EVENT = re.compile(r'\n  \{\n    "ph": "X",\n    "cat": "python_function",\n    "name": "([^"\n]*)",'
                       r'[^}]*"Python parent id": (null|\d+), "Python id": (\d+)[^}]*\}\n  \},')
BLOCK = 1 << 23


def _is_own(name: str) -> bool:
    if "collect" not in name:
        return False
    file = name.split("(", 1)[0].replace("\\", "/")
    return file.endswith(OWN_PER_CALL_FILES) and ("npu_advise/" in file or "advisor/" in file)


def copy_trimmed(src, dst) -> int:
    """Copy the exported trace `src` (text file) to `dst` (binary file) without the collector's per-call
    frames; returns how many events were dropped."""
    dropped_ids: set = set()
    dropped = 0
    tail = ""
    while True:
        block = src.read(BLOCK)
        text = tail + block
        if not block:
            dst.write(text.encode("utf-8", "surrogateescape"))
            return dropped
        # complete events only: cut before the last event's start (it may continue in the next block)
        cut = text.rfind(_EVENT_START)
        if cut <= 0:
            tail = text
            continue
        kept, kept_from = [], 0
        for m in _PY_EVENT.finditer(text, 0, cut):
            name, parent = m[1], m[2]
            if _is_own(name) or (name.startswith("<built-in") and parent != "null" and int(parent) in dropped_ids):
                dropped_ids.add(int(m[3]))
                dropped += 1
                kept.append(text[kept_from:m.start()])
                kept_from = m.end()
        kept.append(text[kept_from:cut])
        dst.write("".join(kept).encode("utf-8", "surrogateescape"))
        tail = text[cut:]
