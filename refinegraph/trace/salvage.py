"""Reading rows out of a damaged trace store, page by page, without trusting its b-trees.

A store cut short (a truncated file, a cut -wal) cannot be read by SQLite past the first
missing page: a table scan stops there, and a lost interior page hides every row under
it. Its rows are still on the pages that remain, so this module reads the file as the
SQLite format describes it (https://www.sqlite.org/fileformat.html): every b-tree page of
the main file and of every frame of its -wal (committed or not, torn ones included),
every cell on them, overflow chains followed, records decoded. Rows are told apart by
their shape (the trace store's tables differ in column count and types); index cells
are kept as keys, which say which events and runs existed even when their rows are gone.

Nothing here decides what is true: refinegraph.trace.store's recovery accepts a row read
this way only where it proves itself (an event's hash covers its body, a blob's digest
its bytes), and keeps SQLite's own reading first wherever SQLite can still read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER_MAGIC = b"SQLite format 3\x00"
WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24
LEAF_TABLE, LEAF_INDEX, INTERIOR_TABLE, INTERIOR_INDEX = 0x0D, 0x0A, 0x05, 0x02
MAX_OVERFLOW_PAGES = 100_000


class Malformed(ValueError):
    """A cell or record that does not decode (cut, or not a cell at all)."""


@dataclass
class Page:
    """One version of a page: its number, bytes, and where it was read (for ordering)."""

    number: int
    data: bytes
    source: str
    """"main" or "wal:<frame index>"."""
    order: int
    """0 for the main file; 1 + frame index for -wal frames (a later frame is newer)."""


@dataclass
class WalInfo:
    """What a -wal file holds, by SQLite's own rules and beyond them."""

    size: int = 0
    page_size: int = 0
    frames: int = 0
    """Whole frames in the file."""
    valid_frames: int = 0
    """Frames SQLite uses: those up to the last commit whose checksums chain from the header."""
    torn_bytes: int = 0
    """Bytes after the last whole frame (a write cut mid-frame): nonzero means the file was cut."""
    header_ok: bool = False
    db_pages: int = 0
    """The database's size in pages at the last valid commit (0: none)."""


@dataclass
class Scan:
    """Everything read from the pages of one store (all versions of every page)."""

    page_size: int = 0
    pages_expected: int = 0
    """The main file's page count by its header (0 when the header itself is gone)."""
    pages_read: int = 0
    pages_missing: int = 0
    """Pages of the database (by its header, or its -wal's last commit) found nowhere."""
    cells_malformed: int = 0
    rows: dict[str, list[tuple[int, tuple]]] = field(default_factory=dict)
    """table -> [(order, values)]: candidate rows, with the order of the page they came from."""
    index_keys: dict[int, set[tuple]] = field(default_factory=dict)
    """column count -> keys of index cells (rowid last), e.g. 3: (run_id, seq, rowid)."""
    wal: WalInfo = field(default_factory=WalInfo)


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the SQLite varint at `pos`."""
    value = 0
    for i in range(9):
        if pos + i >= len(data):
            raise Malformed("varint runs off the page")
        byte = data[pos + i]
        if i == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    raise Malformed("varint too long")  # pragma: no cover - the loop returns by i == 8


def _serial_size(kind: int) -> int:
    if kind in (10, 11):
        raise Malformed(f"reserved serial type {kind}")
    if kind >= 12:
        return (kind - 12) // 2
    return (0, 1, 2, 3, 4, 6, 8, 8, 0, 0)[kind]


def decode_record(payload: bytes) -> tuple:
    """The values of one record (the SQLite record format), strings as UTF-8."""
    header_size, pos = varint(payload, 0)
    if header_size < 1 or header_size > len(payload):
        raise Malformed("record header out of range")
    kinds = []
    while pos < header_size:
        kind, pos = varint(payload, pos)
        kinds.append(kind)
    if pos != header_size:
        raise Malformed("record header overruns itself")
    values: list[Any] = []
    body = header_size
    for kind in kinds:
        size = _serial_size(kind)
        if body + size > len(payload):
            raise Malformed("record body is cut")
        chunk = payload[body:body + size]
        body += size
        if kind == 0:
            values.append(None)
        elif kind in (8, 9):
            values.append(kind - 8)
        elif kind <= 6:
            values.append(int.from_bytes(chunk, "big", signed=True))
        elif kind == 7:
            values.append(struct.unpack(">d", chunk)[0])
        elif kind % 2 == 0:
            values.append(bytes(chunk))
        else:
            try:
                values.append(chunk.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise Malformed("text is not UTF-8") from exc
    if body != len(payload):
        raise Malformed("record has trailing bytes")
    return tuple(values)


class _Pages:
    """Every version of every page, and the one to follow an overflow chain through."""

    def __init__(self, page_size: int, usable: int):
        self.page_size, self.usable = page_size, usable
        self.versions: dict[int, list[Page]] = {}

    def add(self, page: Page) -> None:
        self.versions.setdefault(page.number, []).append(page)

    def at(self, number: int, order: int) -> bytes | None:
        """The newest version of page `number` no newer than `order` (else the newest)."""
        versions = self.versions.get(number)
        if not versions:
            return None
        older = [p for p in versions if p.order <= order]
        return (older[-1] if older else versions[-1]).data

    def payload(self, page: bytes, pos: int, size: int, local: int, order: int) -> bytes:
        """A cell's whole payload: `local` bytes at `pos`, the rest from its overflow chain."""
        if pos + local > len(page):
            raise Malformed("cell runs off the page")
        if local == size:
            return page[pos:pos + size]
        if pos + local + 4 > len(page):
            raise Malformed("overflow pointer runs off the page")
        parts = [page[pos:pos + local]]
        remaining = size - local
        nxt = int.from_bytes(page[pos + local:pos + local + 4], "big")
        seen = set()
        while remaining > 0:
            if nxt == 0 or nxt in seen or len(seen) > MAX_OVERFLOW_PAGES:
                raise Malformed("overflow chain is broken")
            seen.add(nxt)
            data = self.at(nxt, order)
            if data is None or len(data) < self.page_size:
                raise Malformed(f"overflow page {nxt} is missing")
            take = min(remaining, self.usable - 4)
            parts.append(data[4:4 + take])
            remaining -= take
            nxt = int.from_bytes(data[:4], "big")
        return b"".join(parts)


def _local_size(size: int, usable: int, index: bool) -> int:
    """How much of a payload of `size` bytes is on the b-tree page itself."""
    most = ((usable - 12) * 64 // 255) - 23 if index else usable - 35
    if size <= most:
        return size
    least = ((usable - 12) * 32 // 255) - 23
    k = least + ((size - least) % (usable - 4))
    return k if k <= most else least


def _cells(page: Page, pages: _Pages) -> Iterator[tuple[int, tuple]]:
    """(kind, values) of each cell on a b-tree page: kind is the page type; for table
    leaves values are the record's, for index pages the key (rowid last)."""
    data = page.data
    base = 100 if page.number == 1 else 0
    if len(data) < base + 8:
        return
    kind = data[base]
    if kind not in (LEAF_TABLE, LEAF_INDEX, INTERIOR_INDEX):
        return
    header = 12 if kind == INTERIOR_INDEX else 8
    count = int.from_bytes(data[base + 3:base + 5], "big")
    if base + header + 2 * count > len(data):
        return
    for i in range(count):
        at = base + header + 2 * i
        offset = int.from_bytes(data[at:at + 2], "big")
        try:
            pos = offset + (4 if kind == INTERIOR_INDEX else 0)
            size, pos = varint(data, pos)
            if kind == LEAF_TABLE:
                _rowid, pos = varint(data, pos)
            local = _local_size(size, pages.usable, index=kind != LEAF_TABLE)
            values = decode_record(pages.payload(data, pos, size, local, page.order))
        except Malformed:
            yield -1, ()
            continue
        yield kind, values


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def table_of(values: tuple) -> str | None:
    """Which trace-store table a row of these values belongs to, by shape (None: another)."""
    n = len(values)
    if n == 6 and _is_text(values[0]) and isinstance(values[1], int) and all(map(_is_text, values[2:])):
        return "events"
    if n in (9, 10) and all(_is_text(v) for v in values[:5]) and all(v is None or _is_text(v) for v in values[5:]):
        return "runs"
    if n == 2 and _is_text(values[0]) and values[0].startswith("sha256:") and isinstance(values[1], bytes):
        return "blobs"
    if n == 3 and _is_text(values[0]) and isinstance(values[1], int) and _is_text(values[2]):
        return "seals"
    if n == 5 and values[0] is None and all(map(_is_text, values[1:])):
        return "recoveries"
    return None


def read_wal(path: Path, page_size_hint: int = 0) -> tuple[WalInfo, list[tuple[int, bytes]]]:
    """The -wal file's frames as (page number, page bytes), in file order, and what SQLite
    would make of it: its valid frames end at the last commit whose checksums hold."""
    info = WalInfo()
    if not path.is_file():
        return info, []
    data = path.read_bytes()
    info.size = len(data)
    if len(data) < WAL_HEADER:
        info.torn_bytes = len(data)
        return info, []
    magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", data[:24])
    if magic not in WAL_MAGIC or page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        page_size = page_size_hint
        if not page_size:
            info.torn_bytes = len(data) - WAL_HEADER
            return info, []
    else:
        info.header_ok = True
    info.page_size = page_size
    frame = FRAME_HEADER + page_size
    info.frames = (len(data) - WAL_HEADER) // frame
    info.torn_bytes = (len(data) - WAL_HEADER) % frame
    big = magic == WAL_MAGIC[1]
    s1, s2 = _checksum(data[:24], 0, 0, big) if info.header_ok else (0, 0)
    if info.header_ok and (s1, s2) != struct.unpack(">2I", data[24:32]):
        info.header_ok = False
    frames = []
    chain_ok = info.header_ok
    for i in range(info.frames):
        at = WAL_HEADER + i * frame
        number, commit, f1, f2, c1, c2 = struct.unpack(">6I", data[at:at + FRAME_HEADER])
        page = data[at + FRAME_HEADER:at + frame]
        frames.append((number, page))
        if chain_ok and (f1, f2) == (salt1, salt2):
            s1, s2 = _checksum(data[at:at + 8], s1, s2, big)
            s1, s2 = _checksum(page, s1, s2, big)
            if (s1, s2) == (c1, c2):
                if commit:
                    info.valid_frames, info.db_pages = i + 1, commit
                continue
        chain_ok = False
    at = WAL_HEADER + info.frames * frame
    if info.torn_bytes > FRAME_HEADER + 8:  # a frame cut mid-page: its header and first cells may be whole
        number = struct.unpack(">I", data[at:at + 4])[0]
        page = data[at + FRAME_HEADER:]
        frames.append((number, page + bytes(page_size - len(page))))
    return info, frames


def _checksum(data: bytes, s1: int, s2: int, big: bool) -> tuple[int, int]:
    """The -wal checksum (https://www.sqlite.org/fileformat.html#checksum_algorithm)."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def scan(path: Path, wal_path: Path | None = None) -> Scan:
    """Every row and index key on every page of the store at `path` and its -wal."""
    result = Scan()
    data = path.read_bytes() if path.is_file() else b""
    page_size = 0
    reserved = 0
    if len(data) >= 32 and data[:16] == HEADER_MAGIC:
        raw = int.from_bytes(data[16:18], "big")
        page_size = 65536 if raw == 1 else raw
        reserved = data[20]
        result.pages_expected = int.from_bytes(data[28:32], "big")
    wal_info, frames = read_wal(wal_path, page_size) if wal_path is not None else (WalInfo(), [])
    result.wal = wal_info
    page_size = page_size or wal_info.page_size or 4096
    result.page_size = page_size
    pages = _Pages(page_size, page_size - reserved)
    for number in range(1, len(data) // page_size + 1):
        pages.add(Page(number, data[(number - 1) * page_size:number * page_size], "main", 0))
    tail = len(data) % page_size
    if tail >= 8:  # a last page cut short: its header and first cells may still be there
        number = len(data) // page_size + 1
        pages.add(Page(number, data[-tail:] + bytes(page_size - tail), "main (cut)", 0))
    for i, (number, page) in enumerate(frames):
        if number:
            pages.add(Page(number, page, f"wal:{i}", i + 1))
    expected = max(result.pages_expected, wal_info.db_pages)
    result.pages_missing = sum(1 for n in range(1, expected + 1) if n not in pages.versions)
    for versions in pages.versions.values():
        for page in versions:
            result.pages_read += 1
            for kind, values in _cells(page, pages):
                if kind == -1:
                    result.cells_malformed += 1
                elif kind == LEAF_TABLE:
                    table = table_of(values)
                    if table is not None:
                        result.rows.setdefault(table, []).append((page.order, values))
                else:
                    result.index_keys.setdefault(len(values), set()).add(values)
    return result
