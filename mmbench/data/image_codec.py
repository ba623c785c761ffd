"""How a converted source stores its images in the `pixels` column (`data.source.image_format`), and
the decoding back to (size, size, 3) uint8 that `PairDataset` does per row in the loader's workers."""

from __future__ import annotations

import io

import numpy as np

# JPEG at a quality (the default; docs/performance.md measures its size and speed), PNG (lossless, ~4x
# JPEG's size) or raw HWC uint8 bytes (Shapes' in-memory path). Images are stored at the target size, so
# the loader only decodes them.
IMAGE_FORMATS = ("jpeg", "png", "raw")


def encode_image(pixels: np.ndarray, image_format: str, quality: int = 90) -> bytes:
    """(size, size, 3) uint8 -> the bytes stored in the `pixels` column for `image_format`."""
    if image_format == "raw":
        return pixels.tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    elif image_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)  # fast; ~10% above level 6
    else:
        raise ValueError(f"image_format={image_format!r}; valid formats: {list(IMAGE_FORMATS)}")
    return buffer.getvalue()


def decode_pixels(data: bytes, image_format: str, size: int) -> np.ndarray:
    """A `pixels` cell back to (size, size, 3) uint8 (the inverse of `encode_image`)."""
    if image_format == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
