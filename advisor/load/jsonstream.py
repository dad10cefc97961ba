"""Stream the event array of a chrome-trace JSON file in bounded chunks.

Traces reach gigabytes; decoding them whole needs several times their size in memory. This reader
decompresses (gzip or plain) block by block in a background thread (zlib releases the GIL, so
inflating overlaps with decoding on another core), cuts the `traceEvents` array (or a bare top-level
array) into pieces of about CHUNK_BYTES at event boundaries, and hands each piece to msgspec as a
small JSON array. Only a few blocks, one piece and its decoded events are alive at a time.

A cut is tried at the last `},` followed by `{` before the size limit; if the piece does not decode
(the cut fell inside a nested object or a string), the piece grows to the next cut. A piece that
still fails at the end of the file is a corrupt or truncated trace.
"""
from __future__ import annotations

import math
import os
import queue
import re
import threading
import zlib
from typing import Callable, Iterator

import msgspec

from .. import progress
from ..errors import TraceFormatError

# Sizes: pieces of 2 MB keep the decoded structs of one piece around 10 MB; bigger pieces bought no
# speed on the 216k-event benchmark trace but cost 40 MB more peak RSS (8 MB pieces).
CHUNK_BYTES = 2 << 20             # decoded piece size: bounds the memory of one piece's events
READ_BYTES = 256 << 10            # compressed (or plain) bytes read from disk at a time
BLOCK_BYTES = 1 << 20             # most decompressed bytes handed over at a time
QUEUE_BLOCKS = 4                  # blocks buffered between the inflating thread and the decoder
_HEADER_LIMIT = 64 << 20          # the top-level keys before "traceEvents" are small in practice
_CUT = re.compile(rb"\}\s*,\s*\{")
_ARRAY_KEY = re.compile(rb'"traceEvents"\s*:\s*\[')
_ERROR_AT = re.compile(r"\(byte (\d+)\)")
_CUT_TRIES = 4                    # failed cuts in one buffer before jumping to its last candidate
_CUT_SPAN = 64                    # bytes a boundary candidate (with its whitespace) is assumed to span
_AFTER_CLOSE = re.compile(rb"\s*[,}]")
_CLOSE_TRIES = 64                 # `]` candidates tried for the end of traceEvents (Kineto's tail has few)
_TRAILING = "trailing characters"     # msgspec: a complete JSON value ended before the piece did
_DONE = object()


def _inflate(path: str, on_read: Callable[[int], None]) -> Iterator[bytes]:
    """Decompressed blocks of a gzip (possibly multi-member) or plain file, each <= BLOCK_BYTES;
    `on_read(n)` is told of every n bytes read from disk."""
    with open(path, "rb") as f:
        def read(size: int) -> bytes:
            data = f.read(size)
            on_read(len(data))
            return data

        first = read(READ_BYTES)
        if first[:2] != b"\x1f\x8b":
            while first:
                yield first
                first = read(READ_BYTES)
            return
        inflater = zlib.decompressobj(31)
        data = first
        try:
            while True:
                if not data:
                    data = read(READ_BYTES)
                    if not data:
                        break
                out = inflater.decompress(data, BLOCK_BYTES)
                data = inflater.unconsumed_tail
                if out:
                    yield out
                if inflater.eof:
                    rest = inflater.unused_data     # all input after the member's end (not also in the tail)
                    if not rest.strip(b"\x00"):
                        data = read(READ_BYTES)
                        if not data.strip(b"\x00"):
                            return
                        rest = data
                    inflater = zlib.decompressobj(31)     # next gzip member
                    data = rest
            tail = inflater.flush()
            if tail:
                yield tail
        except zlib.error as exc:
            raise TraceFormatError(f"{path}: compressed data is corrupt ({exc})") from None
        if not inflater.eof:
            raise TraceFormatError(f"{path}: compressed data is truncated (gzip stream ends early)")


def too_deep(path) -> str:
    return (f"{path}: JSON nested too deeply (thousands of levels of [ ] or {{ }}; profiler events nest "
            "a few levels): not a trace")


class _Prefetch:
    """Run `_inflate` in a daemon thread, at most QUEUE_BLOCKS blocks ahead of the consumer."""

    def __init__(self, path: str, on_read: Callable[[int], None]):
        self.q: queue.Queue = queue.Queue(QUEUE_BLOCKS)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(path, on_read), name="npa-inflate", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, path: str, on_read):
        try:
            for block in _inflate(path, on_read):
                if not self._put(block):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)
            return
        self._put(_DONE)

    def __iter__(self):
        try:
            while True:
                item = self.q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self):
        self.stop.set()


def _open_blocks(path: str, on_read: Callable[[int], None]) -> Iterator[bytes]:
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return iter(_Prefetch(path, on_read))


class ChunkedArray:
    """Iterate decoded pieces of a trace's event array; afterwards `header` holds the other top-level
    keys (for an object trace) and `bare_array` tells which form the file had."""

    def __init__(self, path: str, decode_piece: Callable[[bytes], object]):
        self.path = path
        self.decode_piece = decode_piece   # bytes of a JSON array -> decoded piece (typed)
        self.header: dict = {}
        self.bare_array = False

    def __iter__(self):
        try:
            size = os.path.getsize(self.path)
        except OSError:
            size = None         # _open_blocks says why
        with progress.task(f"loading {os.path.basename(self.path)}", total=size, unit="bytes") as bar:
            blocks = _open_blocks(self.path, bar.advance)
            try:
                yield from self._pieces(blocks)
            except RecursionError:      # msgspec's decoder recurses once per level of [ ] / { }
                raise TraceFormatError(too_deep(self.path)) from None
            finally:
                close = getattr(blocks, "close", None)
                if close:
                    close()

    def _pieces(self, blocks):
        buf, prefix = self._find_array_start(blocks)
        want = CHUNK_BYTES      # bytes to hold before cutting
        retry_from = 0          # > 0: the cuts before this offset were tried and fell inside an event
        while True:
            parts = [buf]
            size = len(buf)
            eof = False
            while size < want:
                block = next(blocks, None)
                if block is None:
                    eof = True
                    break
                parts.append(block)
                size += len(block)
            buf = b"".join(parts) if len(parts) > 1 else buf
            del parts
            if eof:
                yield from self._finish(buf, prefix)
                return
            if retry_from:
                piece_end = self._cut_after(buf, retry_from)
            else:
                piece_end = self._cut_before(buf, CHUNK_BYTES) or self._cut_after(buf, CHUNK_BYTES)
            failed_cuts = 0
            while piece_end is not None:
                piece = b"".join((b"[", memoryview(buf)[:piece_end], b"]"))
                try:
                    decoded = self.decode_piece(piece)
                except msgspec.ValidationError:
                    raise
                except msgspec.DecodeError as exc:
                    if _TRAILING in str(exc):
                        # The event array closes inside this buffer, before the cut (which fell in the
                        # keys after it): what is left is the file's tail, read to the end and finished.
                        want = math.inf
                        break
                    self._check_cut_error(exc, len(piece))
                    retry_from = piece_end + 1
                    failed_cuts += 1
                    # Many candidates inside one event (a string full of "},{"): try the buffer's last one
                    # instead of decoding the growing piece once per candidate (quadratic).
                    piece_end = self._cut_after(buf, retry_from) if failed_cuts < _CUT_TRIES \
                        else self._last_cut_after(buf, retry_from)
                    continue
                finally:
                    del piece
                buf = buf[buf.index(b"{", piece_end):]
                want, retry_from = CHUNK_BYTES, 0
                yield decoded
                del decoded
                break
            else:
                # No boundary in the buffer ends an event: read more, in growing steps, and search only the
                # new bytes (growing by one block and rescanning everything was quadratic).
                retry_from = max(retry_from, len(buf) - _CUT_SPAN)
                want = len(buf) + max(CHUNK_BYTES, len(buf) // 2)

    def _check_cut_error(self, exc: Exception, size: int):
        """A cut inside an event leaves the piece unterminated: the decoder fails at its very end. An
        error earlier in the piece is corrupt JSON, which no later cut can mend."""
        m = _ERROR_AT.search(str(exc))
        if m and int(m.group(1)) < size - 2:
            raise TraceFormatError(f"{self.path}: corrupt JSON in the event array ({exc})") from None

    @staticmethod
    def _cut_before(buf: bytes, limit: int):
        """Index just past the `}` of the last event-boundary candidate before `limit`, or None."""
        pos = limit
        while True:
            pos = buf.rfind(b"}", 0, pos)
            if pos < 0:
                return None
            if _CUT.match(buf, pos):
                return pos + 1

    @classmethod
    def _last_cut_after(cls, buf: bytes, start: int):
        """The buffer's last event-boundary candidate if it lies at or after `start`, else None."""
        pos = cls._cut_before(buf, len(buf))
        return pos if pos is not None and pos > start else None

    @staticmethod
    def _cut_after(buf: bytes, start: int):
        """Index just past the `}` of the first event-boundary candidate at or after `start`, or None."""
        m = _CUT.search(buf, start)
        return m.start() + 1 if m else None

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
            m = _ARRAY_KEY.search(buf)
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
        tries = 0
        while True:
            pos = buf.rfind(b"]", 0, pos)
            if pos < 0 or tries >= _CLOSE_TRIES:
                detail = f" ({last_error})" if last_error else " (the traceEvents array is not closed)"
                raise TraceFormatError(f"{self.path}: corrupt or truncated JSON{detail}")
            if not _AFTER_CLOSE.match(buf, pos + 1):
                continue        # what closes traceEvents is followed by the next key or the object's end
            tries += 1
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
