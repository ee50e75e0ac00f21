"""Image parts of chat requests: what the gateway takes and what it refuses, before the engine."""

import base64
import io

import pytest
from PIL import Image

from serve.images import MAX_IMAGES, ImageError, check_images, decode_image, image_urls


def data_url(image: Image.Image, fmt: str = "PNG", mime: str = "image/png") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def chat(*urls: str) -> list[dict]:
    parts = [{"type": "text", "text": "more like this"}] + [
        {"type": "image_url", "image_url": {"url": u}} for u in urls
    ]
    return [{"role": "user", "content": parts}]


def refused(url: str) -> ImageError:
    with pytest.raises(ImageError) as err:
        decode_image(url)
    return err.value


def test_a_valid_inline_image_decodes_and_text_only_requests_have_none():
    image = Image.new("RGB", (8, 8), (200, 10, 10))
    decoded = check_images(chat(data_url(image), data_url(image, "JPEG", "image/jpeg")))
    assert [im.size for im in decoded] == [(8, 8), (8, 8)] and decoded[0].getpixel((0, 0)) == (200, 10, 10)
    assert check_images([{"role": "user", "content": "hi"}]) == [] and check_images(None) == []
    assert image_urls(chat("data:x", "y")) == ["data:x", "y"]


def test_every_bad_image_is_a_4xx_that_says_what_to_send():
    png = data_url(Image.new("L", (4, 4)))
    assert "offline" in str(refused("https://example.com/cat.png")) and refused("http://x/y.png").status == 400
    assert "data: URLs" in str(refused("cat.png"))
    assert "base64" in str(refused("data:image/png,rawbytes"))
    assert "not valid base64" in str(refused("data:image/png;base64,@@@@"))
    not_image = "data:image/png;base64," + base64.b64encode(b"hello, not a picture").decode()
    assert "not an image" in str(refused(not_image))
    truncated = png[: len(png) // 2 // 4 * 4]
    assert refused(truncated).status == 400
    bomb = data_url(Image.new("1", (20_000, 20_000)))  # a few KB of PNG, 400M pixels
    assert len(bomb) < 200_000 and refused(bomb).status == 413
    assert refused(data_url(Image.new("1", (5_000, 5_000)))).status == 413  # under Pillow's own limit, over ours
    tiff = data_url(Image.new("RGB", (4, 4)), "TIFF", "image/tiff")
    assert refused(tiff).status == 415
    huge = "data:image/png;base64," + "A" * (6 * 2**20)
    assert refused(huge).status == 413
    assert "needs" in str(refused(""))
    with pytest.raises(ImageError, match=f"at most {MAX_IMAGES}"):
        check_images(chat(*[png] * (MAX_IMAGES + 1)))
