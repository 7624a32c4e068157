"""Camera frame buffers → PIL images, for every pixel layout the camera sources hand over.

picamera2 names formats after libcamera, so the byte order is the reverse of the name (its manual):
`RGB888` is [B, G, R] per pixel, `BGR888` is [R, G, B], `XRGB8888` is [B, G, R, 255], `XBGR8888` is
[R, G, B, 255]; `YUV420` (the Pi's low-resolution stream) is a (H·3/2, W) array: the Y plane then the
quarter-size U and V planes. OpenCV hands over BGR.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

FORMATS = ("YUV420", "RGB888", "BGR888", "XRGB8888", "XBGR8888", "OPENCV_BGR", "GREY")


def frame_to_image(frame: np.ndarray, fmt: str, grey: bool = False) -> Image.Image:
    """A frame as an `L` (when `grey`: the model takes greyscale, so YUV gives its Y plane for free) or `RGB`
    image. Raises ValueError for an unknown format or a buffer of the wrong shape."""
    a = np.asarray(frame)
    if fmt == "YUV420":
        if a.ndim != 2 or a.shape[0] % 3 or a.shape[1] % 2:
            raise ValueError(f"YUV420 frame must be a (H*3/2, W) array, got {a.shape}")
        h, w = a.shape[0] * 2 // 3, a.shape[1]
        y = a[:h]
        if grey:
            return Image.fromarray(np.ascontiguousarray(y), "L")
        chroma = a[h:].reshape(2, h // 2, w // 2)  # U plane, then V plane, each quarter size
        u = chroma[0].repeat(2, axis=0).repeat(2, axis=1)
        v = chroma[1].repeat(2, axis=0).repeat(2, axis=1)
        return Image.fromarray(np.dstack([y, u, v]), "YCbCr").convert("RGB")
    if fmt == "GREY":
        return Image.fromarray(np.ascontiguousarray(a.reshape(a.shape[0], a.shape[1])), "L")
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"{fmt} frame must be an (H, W, 3|4) array, got {a.shape}")
    if fmt in ("RGB888", "XRGB8888", "OPENCV_BGR"):
        rgb = a[:, :, 2::-1]  # B, G, R (, X) → R, G, B
    elif fmt in ("BGR888", "XBGR8888"):
        rgb = a[:, :, :3]
    else:
        raise ValueError(f"unknown frame format {fmt!r} (known: {', '.join(FORMATS)})")
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    return image.convert("L") if grey else image
