"""Reading the image cell of a HF source row (PIL image, {bytes, path} dict, bytes, or a path under
`image_root`) into a square (size, size, 3) uint8 array, with errors that name the path."""

from __future__ import annotations

import io
import os
from pathlib import Path
from urllib.parse import urlparse

import numpy as np


def square_image(image, size: int) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8: resize the short side to `size` (bicubic), centre-crop.

    Already square images of the right size are used as they are. Normalisation is not done here:
    the datamodule maps pixels to [-1, 1] and pretrained vision encoders re-normalise to their statistics.
    """
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _resolve_path(path: str, image_root: Path | None) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() or image_root is None else image_root / p


def read_image(value, size: int, image_root: Path | None) -> np.ndarray:
    """Decode an image cell (PIL image, {bytes, path} dict, bytes, or a path) to (size, size, 3) uint8.

    Raises OSError / ValueError naming the path when the image is missing or unreadable.
    """
    from PIL import Image, UnidentifiedImageError

    path = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        value = data if data is not None else path
    if isinstance(value, str):
        if urlparse(value).scheme in ("http", "https"):
            raise ValueError(
                f"image {value} is a URL; mmbench does not download images, set data.source.image_root "
                f"to a local copy and map a path column"
            )
        path = _resolve_path(value, image_root)
        try:
            value = path.read_bytes()
        except FileNotFoundError as err:
            raise OSError("no such file") from err
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as img:
                return square_image(img, size)
        except UnidentifiedImageError as err:
            raise OSError("not an image file PIL can read") from err
        except (OSError, SyntaxError) as err:
            raise OSError(f"cannot decode it ({err})") from err
    if value is not None and hasattr(value, "convert"):
        return square_image(value, size)
    raise ValueError(f"image cell {value!r} is neither a path, bytes nor an image")


def _describe(value, image_root) -> str:
    if isinstance(value, dict):
        value = value.get("path") or "<embedded bytes>"
    if isinstance(value, str):
        return str(_resolve_path(value, image_root)) if urlparse(value).scheme not in ("http", "https") else value
    return "<embedded bytes>"
