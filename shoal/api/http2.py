"""HTTP/2 as the CLI's unary gRPC calls need it: frames and HPACK, nothing more.

``shoal.api.unary`` runs one connection at a time and one stream on it at a
time, as a client that never accepts pushes; what it needs of HTTP/2 (RFC
9113) is the frame layout, the settings and flow-control bookkeeping it does
itself, and header compression (HPACK, RFC 7541). This module is the part
that is pure data: building frames, cutting a byte stream into frames,
encoding request headers and decoding the server's header blocks.

Request headers go out as literals without indexing and without Huffman
coding: a few hundred bytes per call, so nothing is gained by compressing
them, and the server keeps no state for them. Responses are decoded in full
(indexed fields, the dynamic table with its size updates, Huffman strings), as
a server may use any of it. Every malformed input is ``ProtocolError``.

It exists, rather than the ``h2`` package, for start-up time: ``h2`` with
``hpack`` loads ``dataclasses``, ``inspect`` and ``logging`` (~25 ms of every
``shoal get``), where this module loads nothing.
"""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9
# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings.
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
# Error codes (RST_STREAM, GOAWAY).
NO_ERROR = 0x0
REFUSED_STREAM = 0x7
CANCEL = 0x8

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
# The largest window a peer may open (2^31 - 1).
MAX_WINDOW = 0x7FFFFFFF


class ProtocolError(Exception):
    """The peer broke HTTP/2 or HPACK: the connection cannot go on."""


# A frame as read: (type, flags, stream id, payload).
Frame = tuple[int, int, int, bytes]


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + (stream & MAX_WINDOW).to_bytes(4, "big")
        + payload
    )


def settings_frame(values: dict[int, int]) -> bytes:
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in values.items())
    return frame(SETTINGS, 0, 0, payload)


def parse_settings(payload: bytes) -> dict[int, int]:
    if len(payload) % 6:
        raise ProtocolError("a SETTINGS frame of a length not a multiple of 6")
    values = {}
    for at in range(0, len(payload), 6):
        values[int.from_bytes(payload[at : at + 2], "big")] = int.from_bytes(
            payload[at + 2 : at + 6], "big"
        )
    return values


def window_update(stream: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream, (increment & MAX_WINDOW).to_bytes(4, "big"))


def unpadded(flags: int, payload: bytes, priority: bool = False) -> bytes:
    """A DATA or HEADERS payload without its padding (and a HEADERS priority block)."""
    start, end = 0, len(payload)
    if flags & PADDED:
        if not payload:
            raise ProtocolError("a padded frame without its pad length")
        start, end = 1, len(payload) - payload[0]
    if priority and flags & PRIORITY_FLAG:
        start += 5
    if end < start:
        raise ProtocolError("padding longer than its frame")
    return payload[start:end]


class FrameReader:
    """Whole frames out of the bytes a connection receives, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        at = 0
        while len(buffer) - at >= 9:
            length = int.from_bytes(buffer[at : at + 3], "big")
            if len(buffer) - at < 9 + length:
                break
            stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & MAX_WINDOW
            payload = bytes(buffer[at + 9 : at + 9 + length])
            frames.append((buffer[at + 3], buffer[at + 4], stream, payload))
            at += 9 + length
        del buffer[:at]
        return frames


# ------------------------------------------------------------------- HPACK

# RFC 7541 appendix A.
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
# RFC 7541 appendix B is a canonical Huffman code: each symbol's code follows from the
# code lengths alone. The lengths of symbols 0..256 (EOS), each as chr(ord("A") + n - 5).
_LENGTHS = (
    "ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCC"
    "CCCCCCCDCDIOIJBKABABABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQP"
    "RRSSQSRRTQRSSQQRQSRSSPRRRSRRSVVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVV"
    "WWWWWXWWWWWVZ"
)
_EOS = 256
_codes: dict[tuple[int, int], int] = {}


def huffman_codes() -> dict[tuple[int, int], int]:
    """(length, code) → symbol, built on first use."""
    if not _codes:
        lengths = [ord(c) - ord("A") + 5 for c in _LENGTHS]
        order = sorted(range(257), key=lambda s: (lengths[s], s))
        code, previous = -1, lengths[order[0]]
        for symbol in order:
            code = (code + 1) << (lengths[symbol] - previous)
            previous = lengths[symbol]
            _codes[(previous, code)] = symbol
    return _codes


def huffman_decode(data: bytes) -> bytes:
    codes = huffman_codes()
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            symbol = codes.get((length, code))
            if symbol is not None:
                if symbol == _EOS:
                    raise ProtocolError("a Huffman string holds EOS")
                out.append(symbol)
                code = length = 0
            elif length > 30:
                raise ProtocolError("a Huffman string holds a code that does not exist")
    if length > 7 or code != (1 << length) - 1:  # padding: the start of EOS, all ones
        raise ProtocolError("a Huffman string is padded wrongly")
    return bytes(out)


def _integer(data: bytes, at: int, prefix: int) -> tuple[int, int]:
    """The integer with a ``prefix``-bit prefix at ``data[at]``, and where it ends."""
    if at >= len(data):
        raise ProtocolError("a header block ends inside an integer")
    mask = (1 << prefix) - 1
    value = data[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        if at >= len(data):
            raise ProtocolError("a header block ends inside an integer")
        byte = data[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 28:
            raise ProtocolError("an integer in a header block is too large")


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    if at >= len(data):
        raise ProtocolError("a header block ends before a string")
    huffman = data[at] & 0x80
    length, at = _integer(data, at, 7)
    if at + length > len(data):
        raise ProtocolError("a header block ends inside a string")
    raw = data[at : at + length]
    return (huffman_decode(raw) if huffman else raw), at + length


def _encoded_integer(value: int, prefix: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((value,))
    out = bytearray((mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block of literals without indexing, new names, no Huffman coding."""
    out = bytearray()
    for name, value in headers:
        out += b"\0" + _encoded_integer(len(name), 7) + name
        out += _encoded_integer(len(value), 7) + value
    return bytes(out)


class HeaderDecoder:
    """The server's header blocks, decoded; the dynamic table lives as long as the
    connection, so every block must pass through, those of abandoned streams too."""

    def __init__(self, table_size: int = 4096) -> None:
        self._limit = table_size  # what we allow (SETTINGS_HEADER_TABLE_SIZE)
        self._size_wanted = table_size
        self._table: list[tuple[bytes, bytes]] = []  # newest first
        self._size = 0

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        at = 0
        while at < len(block):
            byte = block[at]
            if byte & 0x80:  # indexed
                index, at = _integer(block, at, 7)
                headers.append(self._entry(index))
            elif byte & 0x40:  # literal, added to the table
                name, value, at = self._literal(block, at, 6)
                headers.append((name, value))
                self._add(name, value)
            elif byte & 0x20:  # dynamic table size update
                size, at = _integer(block, at, 5)
                if size > self._limit:
                    raise ProtocolError("a header table size above the one allowed")
                self._size_wanted = size
                self._evict()
            else:  # literal, not indexed (0000) or never indexed (0001)
                name, value, at = self._literal(block, at, 4)
                headers.append((name, value))
        return headers

    def _literal(self, block: bytes, at: int, prefix: int) -> tuple[bytes, bytes, int]:
        index, at = _integer(block, at, prefix)
        if index:
            name = self._entry(index)[0]
        else:
            name, at = _string(block, at)
        value, at = _string(block, at)
        return name, value, at

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        dynamic = index - len(STATIC_TABLE) - 1
        if index == 0 or dynamic >= len(self._table):
            raise ProtocolError(f"a header index that is not in the table ({index})")
        return self._table[dynamic]

    def _add(self, name: bytes, value: bytes) -> None:
        self._table.insert(0, (name, value))
        self._size += len(name) + len(value) + 32
        self._evict()

    def _evict(self) -> None:
        while self._size > self._size_wanted and self._table:
            name, value = self._table.pop()
            self._size -= len(name) + len(value) + 32
