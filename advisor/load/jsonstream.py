"""Stream the event array of a chrome-trace JSON file in bounded chunks.

Traces reach gigabytes; decoding them whole needs several times their size in memory. This reader
decompresses (gzip or plain) block by block, cuts the `traceEvents` array (or a bare top-level array)
into pieces of about CHUNK_BYTES at event boundaries, and hands each piece to msgspec as a small JSON
array. Only one piece and its decoded events are alive at a time.

A cut is tried at the last `},` followed by `{` before the size limit; if the piece does not decode
(the cut fell inside a nested object), the piece grows to the next cut. A piece that still fails at
the end of the file is a corrupt or truncated trace.
"""
from __future__ import annotations

import gzip
import re
import zlib
from typing import Callable, Iterator

import msgspec

from ..errors import TraceFormatError

CHUNK_BYTES = 8 << 20
READ_BYTES = 4 << 20
_HEADER_LIMIT = 64 << 20          # the top-level keys before "traceEvents" are small in practice
_CUT = re.compile(rb"\}\s*,\s*\{")


def _open_blocks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        magic = raw.read(2)
        raw.seek(0)
        if magic == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=raw)
        else:
            stream = raw
        try:
            while True:
                block = stream.read(READ_BYTES)
                if not block:
                    return
                yield block
        except (EOFError, OSError, zlib.error) as exc:
            raise TraceFormatError(f"{path}: compressed data is truncated or corrupt ({exc})") from None


class ChunkedArray:
    """Iterate decoded pieces of a trace's event array; afterwards `header` holds the other top-level
    keys (for an object trace) and `bare_array` tells which form the file had."""

    def __init__(self, path: str, decode_piece: Callable[[bytes], object]):
        self.path = path
        self.decode_piece = decode_piece   # bytes of a JSON array -> decoded piece (typed)
        self.header: dict = {}
        self.bare_array = False

    def __iter__(self):
        blocks = _open_blocks(self.path)
        buf, prefix = self._find_array_start(blocks)
        eof = False
        while not eof:
            while len(buf) < CHUNK_BYTES:
                block = next(blocks, None)
                if block is None:
                    eof = True
                    break
                buf += block
            if eof:
                yield from self._finish(buf, prefix)
                return
            piece_end = self._cut(buf, CHUNK_BYTES)
            while piece_end is not None:
                try:
                    decoded = self.decode_piece(b"[" + buf[:piece_end] + b"]")
                except msgspec.ValidationError:
                    raise
                except msgspec.DecodeError:
                    piece_end = self._cut(buf, len(buf), after=piece_end + 1)
                    continue
                yield decoded
                buf = buf[piece_end:].lstrip().lstrip(b",")
                break
            # no usable cut in the buffer: read more before trying again

    @staticmethod
    def _cut(buf: bytes, limit: int, after: int = 0):
        """Index just past the `}` of the last event boundary before `limit` (first after `after`)."""
        last = None
        if after:
            m = _CUT.search(buf, after)
            return m.start() + 1 if m else None
        start = max(0, limit - (1 << 20))
        for m in _CUT.finditer(buf, start, limit):
            last = m
        if last is None and start > 0:
            for m in _CUT.finditer(buf, 0, limit):
                last = m
        return last.start() + 1 if last else None

    def _find_array_start(self, blocks):
        buf = b""
        for block in blocks:
            buf += block
            head = buf.lstrip()
            if not head:
                continue
            if head[:1] == b"[":
                self.bare_array = True
                return head[1:], None
            if head[:1] != b"{":
                raise TraceFormatError(f"{self.path}: not a JSON trace (starts with {head[:20]!r})")
            m = re.search(rb'"traceEvents"\s*:\s*\[', buf)
            if m:
                return buf[m.end():], buf[:m.start()]
            if len(buf) > _HEADER_LIMIT:
                break
        if not buf.strip():
            raise TraceFormatError(f"{self.path}: file is empty")
        raise TraceFormatError(f"{self.path}: JSON object without a \"traceEvents\" array")

    def _finish(self, buf: bytes, prefix):
        """The last piece: events up to the array's closing bracket, then the rest of the object."""
        if self.bare_array:
            body = buf.rstrip()
            if not body.endswith(b"]"):
                raise TraceFormatError(f"{self.path}: truncated JSON (the event array is not closed)")
            yield self._decode_last(body[:-1])
            return
        # Object form: find the `]` closing traceEvents by trying candidates from the right; the tail
        # after it must complete the object.
        pos = len(buf)
        last_error = None
        while True:
            pos = buf.rfind(b"]", 0, pos)
            if pos < 0:
                detail = f" ({last_error})" if last_error else " (the traceEvents array is not closed)"
                raise TraceFormatError(f"{self.path}: corrupt or truncated JSON{detail}")
            try:
                header = msgspec.json.decode(prefix + b'"traceEvents": null' + buf[pos + 1:])
            except msgspec.DecodeError:
                continue
            if not isinstance(header, dict):
                continue
            # The tail may itself hold arrays (Kineto's "INFO" log lines): this `]` is the right one
            # only if what precedes it decodes as events.
            try:
                events = self._decode_last(buf[:pos])
            except TraceFormatError as exc:
                last_error = exc.args[0].rsplit("(", 1)[-1].rstrip(")")
                continue
            header.pop("traceEvents", None)
            self.header = header
            yield events
            return

    def _decode_last(self, body: bytes):
        body = body.rstrip().rstrip(b",")
        try:
            return self.decode_piece(b"[" + body + b"]")
        except msgspec.ValidationError:
            raise
        except msgspec.DecodeError as exc:
            raise TraceFormatError(f"{self.path}: corrupt or truncated JSON ({exc})") from None
