"""The decode gate: bad files become verdicts with reasons, never exceptions."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_infer.gates.decode import DecodeRejected, decode_image
from tests.conftest import DIGITS_TEST


def jpeg_bytes(size: tuple[int, int] = (160, 120)) -> bytes:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming huge dimensions, with no pixel data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


def reason(data: bytes, **kwargs) -> str:
    with pytest.raises(DecodeRejected) as err:
        decode_image(data, **kwargs)
    return err.value.verdict.reason


def test_good_images_decode() -> None:
    assert decode_image(jpeg_bytes()).size == (160, 120)
    png = next((DIGITS_TEST / "0").glob("*.png")).read_bytes()
    assert decode_image(png).size == (32, 32)


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.9])  # 0.02 cuts inside the header
def test_truncated_jpeg_is_caught(keep: float) -> None:
    data = jpeg_bytes()
    assert reason(data[: int(len(data) * keep)]) == "truncated"


def test_bad_files() -> None:
    assert reason(b"") == "empty_file"
    assert reason(b"hello, this is text") == "not_an_image"
    assert reason(png_header_only(50_000, 50_000)) == "too_large"
    assert reason(jpeg_bytes((4, 4))) == "too_small"
    assert reason(jpeg_bytes((100, 100)), max_pixels=5_000) == "too_large"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        decode_image(data)
    except DecodeRejected as rejected:
        assert rejected.verdict.reason and rejected.verdict.detail


BASE = jpeg_bytes((64, 48))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.integers(0, 255)), max_size=12),
       st.integers(0, len(BASE)))
def test_mutated_jpegs_never_crash(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(BASE[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    try:
        image = decode_image(bytes(data))
    except DecodeRejected as rejected:
        assert rejected.verdict.reason in {"empty_file", "not_an_image", "decode_error", "truncated",
                                           "too_large", "too_small"}
    else:
        assert image.size[0] >= 8
