"""Preprocessing: one function, exact arithmetic, quantization with the tensor's own parameters."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from edge_infer.gates.decode import decode_image
from edge_infer.manifest import ImageInputSpec
from edge_infer.preprocess import image_tensor, model_view, normalized_image, to_input_tensor
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


def test_letterbox_keeps_the_aspect_ratio_and_pads_evenly() -> None:
    wide = Image.new("L", (80, 40), 200)  # 2:1 into a 16×16 input → 16×8 picture, 4 rows of padding each side
    view = model_view(wide, ImageInputSpec(16, 16, "L", resize="letterbox", pad=7))
    pixels = np.asarray(view)
    assert view.size == (16, 16)
    assert (pixels[:4] == 7).all() and (pixels[12:] == 7).all() and (pixels[4:12] == 200).all()


def test_centre_crop_fills_the_input_with_the_middle() -> None:
    stripes = np.zeros((40, 80), np.uint8)
    stripes[:, 20:60] = 255  # the middle half of a 2:1 frame is white
    view = model_view(Image.fromarray(stripes), ImageInputSpec(16, 16, "L", resize="centre-crop"))
    pixels = np.asarray(view)
    assert view.size == (16, 16) and pixels[:, 1:-1].min() > 200  # the crop is exactly the white middle


def test_mean_std_normalisation_per_channel_in_model_order() -> None:
    image = Image.new("RGB", (4, 4), (10, 20, 30))
    x = normalized_image(image, ImageInputSpec(4, 4, "BGR", mean=(30.0, 20.0, 10.0), std=(2.0, 4.0, 5.0)))
    assert x[0, 0].tolist() == [0.0, 0.0, 0.0]
    y = normalized_image(image, ImageInputSpec(4, 4, "RGB", mean=(0.0, 10.0, 20.0), std=(10.0, 10.0, 10.0)))
    assert y[0, 0].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resize": "fit"}, "'input.resize': unsupported value 'fit'"),
        ({"normalize": {"mean": [1.0], "std": [0.0]}}, "std must be positive"),
        ({"normalize": {"mean": [1.0, 2.0], "std": [1.0, 1.0]}}, "expected a list of 1 numbers"),
        ({"pad": 300}, "'input.pad'"),
    ],
)
def test_bad_image_specs_are_refused(change: dict, message: str) -> None:
    from edge_infer.manifest import ManifestError, parse_image_spec

    doc = {"input": {"kind": "image", "width": 16, "height": 16, "color": "L", **change}}
    with pytest.raises(ManifestError, match=re.escape(message)):
        parse_image_spec(doc)
