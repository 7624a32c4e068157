"""Preprocessing: one function, exact arithmetic, quantization with the tensor's own parameters."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge_infer.gates.image import decode_image
from edge_infer.manifest import ImageInputSpec
from edge_infer.preprocess import image_tensor, normalized_image, to_input_tensor
from edge_infer.runtime import TensorInfo
from tests.conftest import DIGITS_TEST

U8 = TensorInfo(index=0, shape=(1, 16, 16, 1), dtype=np.dtype(np.uint8), scale=1 / 255, zero_point=0)
I8 = TensorInfo(index=0, shape=(1, 16, 16, 1), dtype=np.dtype(np.int8), scale=1 / 255, zero_point=-128)
F32 = TensorInfo(index=0, shape=(1, 16, 16, 1), dtype=np.dtype(np.float32), scale=0.0, zero_point=0)


def digit() -> Image.Image:
    return Image.open(next((DIGITS_TEST / "8").glob("*.png")))


def test_grayscale_resize_and_scale() -> None:
    spec = ImageInputSpec(width=16, height=16, color="L")
    x = normalized_image(digit(), spec)
    assert x.shape == (16, 16, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    expected = np.asarray(digit().convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(x[..., 0], expected, rtol=0, atol=1e-6)


def test_uint8_io_with_unit_scale_feeds_raw_pixels() -> None:
    """scale 1/255, zero point 0: the quantized tensor is exactly the resized pixels."""
    spec = ImageInputSpec(width=16, height=16, color="L")
    q = image_tensor(digit(), spec, U8)
    raw = np.asarray(digit().convert("L").resize((16, 16), Image.Resampling.BILINEAR))
    assert q.dtype == np.uint8 and q.shape == (1, 16, 16, 1)
    np.testing.assert_array_equal(q[0, ..., 0], raw)


def test_int8_zero_point_and_clipping() -> None:
    x = np.array([[[0.0], [1.0], [2.0], [-1.0]]], dtype=np.float32)
    q = to_input_tensor(x, I8)
    assert q.dtype == np.int8
    assert q.reshape(-1).tolist() == [-128, 127, 127, -128]


def test_float_input_passes_through() -> None:
    x = np.full((16, 16, 1), 0.25, np.float32)
    out = to_input_tensor(x, F32)
    assert out.shape == (1, 16, 16, 1) and out.dtype == np.float32 and float(out[0, 0, 0, 0]) == 0.25


def test_colour_orders() -> None:
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    rgb = normalized_image(image, ImageInputSpec(4, 4, "RGB", scale=1.0))
    bgr = normalized_image(image, ImageInputSpec(4, 4, "BGR", scale=1.0))
    assert rgb[0, 0].tolist() == [10, 20, 30] and bgr[0, 0].tolist() == [30, 20, 10]
    gray = normalized_image(image, ImageInputSpec(4, 4, "L", scale=1.0))
    assert gray.shape == (4, 4, 1)


def test_exif_orientation_is_applied() -> None:
    """A phone photo stored sideways with an EXIF rotate flag is seen upright."""
    image = Image.new("L", (8, 4), 0)
    image.paste(255, (0, 0, 4, 4))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif, quality=100)
    upright = normalized_image(decode_image(buf.getvalue(), min_side=1), ImageInputSpec(4, 8, "L", scale=1.0))
    assert upright.shape == (8, 4, 1)
    assert upright[:4].mean() > 200 and upright[4:].mean() < 50  # the white half is now on top


def test_unquantized_integer_input_is_an_error() -> None:
    bad = TensorInfo(index=0, shape=(1, 2, 2, 1), dtype=np.dtype(np.uint8), scale=0.0, zero_point=0)
    with pytest.raises(ValueError, match="no quantization parameters"):
        to_input_tensor(np.zeros((2, 2, 1), np.float32), bad)
