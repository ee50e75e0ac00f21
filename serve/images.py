"""Image content parts of chat requests, checked at the gateway before anything reaches the engine.

OpenAI clients send images as `{"type": "image_url", "image_url": {"url": ...}}` parts of a
message's content list. The server runs offline, so only inline `data:image/...;base64,` URLs can
be read; an http(s) URL would make the engine try to fetch it (and wait for a network that is not
there), so it is refused here with a 400 that says what to send instead. Every image is decoded
with Pillow under limits on count, bytes and pixels (a small PNG can claim 20,000 x 20,000 pixels
and expand to gigabytes), so no image can crash or stall the server.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, UnidentifiedImageError

from thinkrec.errors import ThinkRecError

MAX_IMAGES = 4  # per request
MAX_IMAGE_BYTES = 4 * 2**20  # decoded file size
MAX_PIXELS = 4096 * 4096
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,")


class ImageError(ThinkRecError):
    """A request's image that the server will not take; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def image_urls(messages) -> list[str]:
    """The URL of every image part in a chat request's messages (malformed parts included, as '')."""
    urls = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                ref = part.get("image_url")
                urls.append(ref.get("url", "") if isinstance(ref, dict) else ref if isinstance(ref, str) else "")
    return urls


def decode_image(url: str) -> Image.Image:
    """The image a data: URL holds, fully decoded, or an ImageError saying what is wrong with it."""
    if not isinstance(url, str) or not url:
        raise ImageError("an image_url part needs {'url': 'data:image/png;base64,...'}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https", "file", "ftp"):
        raise ImageError(
            f"this server is offline and fetches no {scheme} URL: send the image inline as data:image/png;base64,..."
        )
    match = DATA_URL.match(url)
    if scheme != "data" or not match:
        raise ImageError("image URLs must be data: URLs (data:image/png;base64,...)")
    if not match["b64"]:
        raise ImageError("image data: URLs must be base64 (data:image/png;base64,...)")
    data = url[match.end() :]
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageError(f"image larger than {MAX_IMAGE_BYTES // 2**20} MiB", 413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image data is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError:
        raise ImageError(f"image is over the {MAX_PIXELS:,}-pixel limit", 413) from None
    except (UnidentifiedImageError, OSError):
        raise ImageError("image data is not an image this server can read (PNG, JPEG, GIF, WebP, BMP)") from None
    if image.format not in FORMATS:
        raise ImageError(f"{image.format} images are not supported: send PNG, JPEG, GIF, WebP or BMP", 415)
    width, height = image.size  # from the header, before any pixel is decoded
    if width * height > MAX_PIXELS:
        raise ImageError(f"image of {width} x {height} pixels is over the {MAX_PIXELS:,}-pixel limit", 413)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ImageError("image data is corrupt or truncated") from None
    return image


def check_images(messages) -> list[Image.Image]:
    """Every image of a chat request, decoded; the first bad one raises an ImageError."""
    urls = image_urls(messages)
    if len(urls) > MAX_IMAGES:
        raise ImageError(f"{len(urls)} images in one request; at most {MAX_IMAGES}")
    return [decode_image(url) for url in urls]
