"""The Space's upload limits (examples/space/dbb_space/uploads.py): size in bytes, dimensions, non-image,
damaged and decompression-bomb files each get a clear message, and nothing oversize is
decoded. No models are built: these call the upload handler directly.
"""

import io
import struct
import zlib

import gradio as gr
import numpy as np
import pytest
from gradio.data_classes import ImageData
from PIL import Image, ImageFile

from space_package import load_app


@pytest.fixture(scope="module")
def app():
    return load_app()


@pytest.fixture(scope="module")
def config(app):
    return app.settings.parse_config(["--tiny", "--max_upload_bytes", "20000", "--max_upload_pixels", "10000",
                                      "--max_upload_side", "200"], {}).space  # fmt: skip


def png(path, size=(64, 48), mode="RGB", noise=True):
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    pixels = pixels if noise else np.full_like(pixels, 128)  # a flat image stays a few hundred bytes
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(path, width, height):
    """A valid PNG header claiming ``width x height`` with a tiny (bogus) body: a bomb's shape."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def test_a_good_upload_is_decoded(app, config, tmp_path):
    image = app.uploads.open_upload(png(tmp_path / "ok.png"), config)
    assert image.size == (64, 48) and image.mode == "RGB"
    assert np.asarray(image).shape == (48, 64, 3)  # fully decoded, not a lazy header
    palette = app.uploads.open_upload(png(tmp_path / "p.png", mode="P"), config)
    assert palette.size == (64, 48)


def test_an_oversize_file_is_refused_before_it_is_opened(app, config, tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 30_000)
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(gr.Error, match="The upload is 29 KB; this Space accepts images up to 20 KB"):
        app.uploads.open_upload(big, config)
    assert opened == []


def test_too_many_pixels_or_too_long_a_side_is_refused_before_decoding(app, config, tmp_path, monkeypatch):
    decoded = []
    original_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or original_load(self))
    with pytest.raises(gr.Error, match="is 150 x 150 pixels; this Space accepts images of at most 10,000 pixels"):
        app.uploads.open_upload(png(tmp_path / "square.png", (150, 150), noise=False), config)
    with pytest.raises(gr.Error, match="is 250 x 10 pixels; .* and 200 pixels a side"):
        app.uploads.open_upload(png(tmp_path / "strip.png", (250, 10), noise=False), config)
    # A few hundred bytes claiming 100 000 x 100 000 pixels: PIL's own bomb check fires on open.
    with pytest.raises(gr.Error, match="too many pixels"):
        app.uploads.open_upload(png_header_only(tmp_path / "bomb.png", 100_000, 100_000), config)
    # 10 000 x 10 000 only warns in PIL (its error is at twice its 89 MP limit): the Space refuses it.
    with pytest.raises(gr.Error, match="is 10000 x 10000 pixels"):
        app.uploads.open_upload(png_header_only(tmp_path / "bomb2.png", 10_000, 10_000), config)
    assert decoded == []
    app.uploads.open_upload(png(tmp_path / "fine.png", (100, 100), noise=False), config)
    assert decoded and set(decoded) == {(100, 100)}  # the patched decoder does see what is accepted


@pytest.mark.parametrize("content", [b"just some text, renamed to .png\n", b"", b"\x89PNG\r\n\x1a\n garbage"])
def test_a_non_image_is_refused(app, config, tmp_path, content):
    fake = tmp_path / "notes.png"
    fake.write_bytes(content)
    with pytest.raises(gr.Error, match="not an image this Space can read"):
        app.uploads.open_upload(fake, config)


def test_a_truncated_image_is_refused(app, config, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(buffer, "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(gr.Error, match="damaged or truncated"):
        app.uploads.open_upload(cut, config)


def test_the_messages_never_echo_the_file_name(app, config, tmp_path):
    # gradio renders gr.Error messages as HTML: an upload's name must not reach them.
    fake = tmp_path / "<img src=x onerror=alert(1)>.png"
    fake.write_bytes(b"text")
    with pytest.raises(gr.Error) as error:
        app.uploads.open_upload(fake, config)
    assert "<img" not in error.value.message


def test_the_input_component_checks_uploads(app, config, tmp_path):
    component = app.uploads.checked_image(config, sources=["upload"], elem_id="input-image")
    props = component.get_config()
    assert props["sources"] == ["upload"] and props["elem_id"] == "input-image" and props["type"] == "pil"
    image = component.preprocess(ImageData(path=str(png(tmp_path / "ok.png")), orig_name="ok.png"))
    assert isinstance(image, Image.Image) and image.size == (64, 48)
    fake = tmp_path / "notes.png"
    fake.write_text("not an image")
    with pytest.raises(gr.Error, match="not an image"):
        component.preprocess(ImageData(path=str(fake), orig_name="notes.png"))
    assert component.preprocess(None) is None


def test_limits_come_from_the_environment_and_are_validated(app):
    environ = {"DBB_SPACE_MAX_UPLOAD_BYTES": "5000000", "DBB_SPACE_MAX_UPLOAD_PIXELS": "1000000",
               "DBB_SPACE_MAX_UPLOAD_SIDE": "2048"}  # fmt: skip
    config = app.settings.parse_config(["--tiny"], environ).space
    assert (config.max_upload_bytes, config.max_upload_pixels, config.max_upload_side) == (5_000_000, 1_000_000, 2048)
    defaults = app.settings.parse_config(["--tiny"], {}).space
    assert (defaults.max_upload_bytes, defaults.max_upload_pixels) == (10 * 2**20, 25_000_000)
    with pytest.raises(ValueError, match="max_upload_pixels must be positive"):
        app.settings.parse_config(["--tiny", "--max_upload_pixels", "0"], {})
