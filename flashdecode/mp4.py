"""Fragmented MP4 on disk: which bytes and frames of a file being written are whole, box by box.

A fragmented MP4 is ftyp + moov (the init boxes), then one moof+mdat pair per fragment, then an mfra index
at close. What a player can use of a file cut short (a full disk, kill -9) is everything up to the last
complete fragment: `complete_fragments_size` finds it in a file, `_Fragments` follows it in the bytes as the
muxer writes them, so the writer always knows what is whole on disk.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path


def _mp4_boxes(path):
    """(type, end offset) of each complete top-level box of an MP4, in order; a box cut short ends the walk."""
    size, pos = os.path.getsize(path), 0
    with open(path, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            n, kind = struct.unpack(">I4s", f.read(8))
            if n == 1 and pos + 16 <= size:
                n = struct.unpack(">Q", f.read(8))[0]
            if n < 8 or pos + n > size:
                return
            pos += n
            yield kind, pos


def complete_fragments_size(path) -> int:
    """Bytes of a fragmented MP4 up to the end of its last complete fragment (0: no complete fragment).

    Walks the top-level boxes (ftyp, moov, moof+mdat pairs, mfra at the end); a box cut short by a full disk
    or a kill ends the walk.
    """
    good = 0
    for kind, end in _mp4_boxes(path):
        if kind != b"moof":  # a fragment's header counts only together with its data (the next mdat)
            good = end
    return good


def mp4_finished(path) -> bool:
    """Whether a fragmented MP4 was written to its end: every box complete, the closing mfra last.

    A write that fails in the muxer's final flush (a full disk at close) is not reported by PyAV: this is
    how it is noticed.
    """
    if not os.path.isfile(path):
        return False
    last = None
    for kind, end in _mp4_boxes(path):
        last = (kind, end)
    return last is not None and last[0] == b"mfra" and last[1] == os.path.getsize(path)


class _Fragments:
    """The file object PyAV's MP4/MOV muxer writes through: the bytes go straight on to the file (or stdout),
    and the top-level boxes are followed as they pass, so it is known how many bytes and frames are whole on
    disk (the init boxes, then each complete moof+mdat fragment).

    An encoder holds frames (x264's look-ahead and frame threads) and the muxer holds the fragment it is
    filling until the next keyframe, so to put every frame on disk now, the writer ends the *segment*: it
    drains the encoder and closes the muxer. The next frames start a new one, whose init boxes (ftyp, moov:
    the same bytes) are dropped, whose fragments carry their own decode times (movflags frag_discont) and
    continue the sequence numbers, and which takes the place of the previous segment's closing mfra. The file
    is then one fragmented MP4, playable at every moment up to its last whole fragment.
    """

    def __init__(self, target):
        self.target = target  # a path (opened with the first bytes) or an open binary stdout
        self.raw = None if isinstance(target, (str, Path)) else target
        self.start = 0  # where our bytes begin in the file (a stdout redirected with >> starts at its end)
        self.pos = 0  # bytes of ours in the file
        self.whole_bytes = self.whole_frames = 0
        self.sequence = 0  # fragments so far (mfhd sequence numbers, 1, 2, ... across segments)
        self.continuing = False  # a segment after the first: its ftyp and moov are dropped
        self.mfra_at: int | None = None  # where the closing mfra of the last segment begins
        self.error: BaseException | None = None
        self._header = bytearray()  # the box being collected: a header, or a whole moof
        self._box: tuple[bytes, int, int] | None = None  # (kind, bytes left, start) of the box passing through
        self._samples = 0  # frames of the last moof, whole once its mdat is

    def new_segment(self) -> None:
        self.continuing = True
        if self.mfra_at is not None and self.raw is not None and self.raw.seekable():
            self.raw.truncate(self.start + self.mfra_at)  # the file's end moves past it: the mfra goes
            self.raw.seek(self.start + self.mfra_at)
            self.pos, self.mfra_at = self.mfra_at, None

    def write(self, data) -> int:
        try:
            self._follow(memoryview(data).cast("B"))
        except BaseException as e:  # PyAV reports a failed write as its own error: keep the real one
            self.error = self.error or e
            raise
        return len(data)

    def _follow(self, data: memoryview) -> None:
        while data:
            if self._box is None:  # collecting a header (8 bytes, 16 with a 64-bit size) or a whole moof
                need = 8 if len(self._header) < 8 else self._header_size()
                take = min(need - len(self._header), len(data))
                self._header += data[:take]
                data = data[take:]
                if len(self._header) >= 8 and len(self._header) == self._header_size():
                    self._start_box()
                continue
            kind, left, start = self._box
            take = min(left, len(data))
            if not (self.continuing and kind in (b"ftyp", b"moov")):
                self._out(data[:take])
            data, left = data[take:], left - take
            self._box = (kind, left, start)
            if left == 0:
                self._end_box(kind, start)

    def _header_size(self) -> int:
        size, kind = struct.unpack(">I4s", self._header[:8])
        if size == 1:
            return 16 if len(self._header) < 16 else struct.unpack(">Q", self._header[8:16])[0]
        return size if kind == b"moof" else 8  # a moof is read whole: its sample count and sequence number

    def _start_box(self) -> None:
        size, kind = struct.unpack(">I4s", self._header[:8])
        if size == 1:
            size = struct.unpack(">Q", self._header[8:16])[0]
        header, self._header = bytes(self._header), bytearray()
        start = self.pos
        if kind == b"moof":
            header = self._renumber(bytearray(header))
        if not (self.continuing and kind in (b"ftyp", b"moov")):
            self._out(memoryview(header))
        self._box = (kind, size - len(header), start)
        if size == len(header):
            self._end_box(kind, start)

    def _renumber(self, moof: bytearray) -> bytes:
        """Set the fragment's sequence number (mfhd) to follow the file's, and note its frame count (trun)."""
        self.sequence += 1
        self._samples = 0
        for kind, body in _children(moof, 8, len(moof)):
            if kind == b"mfhd":
                struct.pack_into(">I", moof, body + 4, self.sequence)
            if kind == b"traf":
                end = body - 8 + struct.unpack_from(">I", moof, body - 8)[0]
                self._samples += sum(struct.unpack_from(">I", moof, b + 4)[0]
                                     for k, b in _children(moof, body, end) if k == b"trun")
        return bytes(moof)

    def _end_box(self, kind: bytes, start: int) -> None:
        self._box = None
        if kind == b"mdat":
            self.whole_frames += self._samples
            self._samples = 0
        if kind == b"mfra":
            self.mfra_at = start
        elif kind != b"moof":  # a moof counts only with its mdat
            self.whole_bytes = self.pos

    def _out(self, data: memoryview) -> None:
        if self.raw is None:
            self.raw = open(self.target, "wb", buffering=0)
        elif self.pos == 0 and self.raw.seekable():
            self.start = self.raw.tell()
        while data:
            n = self.raw.write(data)
            data = data[n:]
            self.pos += n

    def cut_to_whole(self) -> None:
        """After a failed write: take back the bytes past the last whole fragment, where the file allows it."""
        if self.raw is not None and self.raw.seekable():
            self.raw.truncate(self.start + self.whole_bytes)

    def close(self) -> None:
        if self.raw is not None and self.raw is not self.target:
            self.raw.close()


def _children(buf, pos: int, end: int):
    """(kind, payload offset) of the boxes in buf[pos:end]."""
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, pos)
        if size < 8:
            return
        yield kind, pos + 8
        pos += size
