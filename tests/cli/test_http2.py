"""The CLI's HTTP/2 frames and HPACK (``shoal.api.http2``), against python-hyper's.

``hpack`` (what grpcio's peers and ``h2`` use, RFC 7541 to the letter) encodes
what a server may send, every representation included: indexed fields,
literals added to the dynamic table, table size updates, Huffman strings. Our
decoder must read all of it back, block after block on one table; and what we
encode, ``hpack`` must decode. Malformed input is a ``ProtocolError``, never
another exception.
"""

from __future__ import annotations

import contextlib
import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.api import http2

NAMES = [b":status", b"content-type", b"grpc-status", b"grpc-message", b"x-custom"]


def random_bytes(rng: random.Random, low: int, high: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(low, high)))


def test_the_huffman_code_is_rfc_7541s() -> None:
    codes = http2.huffman_codes()
    assert len(codes) == 257
    for symbol in range(257):
        assert codes[(REQUEST_CODES_LENGTH[symbol], REQUEST_CODES[symbol])] == symbol


@pytest.mark.parametrize(
    "text", [b"", b"a", b"application/grpc", bytes(range(256)), "ünïcode %".encode()]
)
def test_huffman_strings_decode(text: bytes) -> None:
    encoded = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(text)
    assert http2.huffman_decode(encoded) == text


def test_what_a_server_encodes_decodes_block_after_block_on_one_table() -> None:
    rng = random.Random(7)
    encoder = hpack.Encoder()
    decoder = http2.HeaderDecoder()
    for n in range(2000):
        if n % 250 == 0:  # the encoder shrinks or grows its table: a size update
            encoder.header_table_size = rng.choice([0, 64, 300, 4096])
        headers = [
            (rng.choice([*NAMES, random_bytes(rng, 1, 20)]), random_bytes(rng, 0, 80))
            for _ in range(rng.randrange(1, 6))
        ]
        block = encoder.encode(headers, huffman=n % 3 != 0)
        assert decoder.decode(block) == headers


def test_what_we_encode_a_server_decodes() -> None:
    rng = random.Random(11)
    decoder = hpack.Decoder()
    for _ in range(300):
        headers = [
            (random_bytes(rng, 1, 300), random_bytes(rng, 0, 300)) for _ in range(rng.randrange(4))
        ]
        assert decoder.decode(http2.encode_headers(headers), raw=True) == headers


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=64))
def test_a_malformed_header_block_is_a_protocol_error(block: bytes) -> None:
    with contextlib.suppress(http2.ProtocolError):
        http2.HeaderDecoder().decode(block)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.integers(min_value=1, max_value=50))
def test_frames_come_whole_however_the_bytes_are_cut(payloads: list[bytes], cut: int) -> None:
    sent = [(http2.DATA, n % 2, 2 * n + 1, p) for n, p in enumerate(payloads)]
    data = b"".join(http2.frame(*f) for f in sent)
    reader = http2.FrameReader()
    got: list[http2.Frame] = []
    for at in range(0, len(data), cut):
        got += reader.feed(data[at : at + cut])
    assert got == sent


def test_settings_and_padding() -> None:
    values = {http2.INITIAL_WINDOW_SIZE: 1 << 20, http2.MAX_FRAME_SIZE: 1 << 15}
    ((kind, flags, stream, payload),) = http2.FrameReader().feed(http2.settings_frame(values))
    assert (kind, flags, stream) == (http2.SETTINGS, 0, 0)
    assert http2.parse_settings(payload) == values
    assert http2.unpadded(http2.PADDED, b"\x02abc\0\0") == b"abc"
    with pytest.raises(http2.ProtocolError):
        http2.unpadded(http2.PADDED, b"\x09abc")
    with pytest.raises(http2.ProtocolError):
        http2.parse_settings(b"12345")
