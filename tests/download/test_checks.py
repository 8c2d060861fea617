"""What a download must be to count: a whole image, upright, one frame, from an http(s) or data URL."""

import io
import urllib.request

import pytest
from PIL import Image

from clipflow.download import http
from clipflow.download.images import ImageProblem, prepared_image
from conftest import animated_gif, corrupt_scan_jpeg, jpeg, rotated_jpeg


@pytest.mark.parametrize(
    "url, sent",
    [
        ("http://example.com/a b.jpg", "http://example.com/a%20b.jpg"),
        ("  http://example.com/caf\u00e9.jpg\n", "http://example.com/caf%C3%A9.jpg"),
        ("http://example.com/x.jpg?q=a b&r=\u2615", "http://example.com/x.jpg?q=a%20b&r=%E2%98%95"),
        ("http://example.com/already%20escaped.jpg", "http://example.com/already%20escaped.jpg"),
        ("HTTP://b\u00fccher.example/p.jpg#frag", "http://xn--bcher-kva.example/p.jpg"),
        ("http://exa\tmple.com/a\nb.jpg", "http://example.com/ab.jpg"),
        ("https://[::1]:8080/a.jpg", "https://[::1]:8080/a.jpg"),
        ("http://example.com", "http://example.com/"),
    ],
)
def test_urls_are_sent_as_browsers_send_them(url, sent):
    assert http.browser_url(url) == sent


def test_only_http_https_and_data_urls_are_opened(tmp_path):
    http.install(timeout=2, deadline=5)
    local = tmp_path / "secret.txt"
    local.write_text("private")
    with pytest.raises(http.DownloadError, match="unsupported URL scheme 'file'"):
        urllib.request.urlopen(local.as_uri())
    pixel = "data:image/gif;base64,R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw=="
    with urllib.request.urlopen(pixel) as response:
        assert response.read().startswith(b"GIF89a")


def test_a_whole_jpeg_passes_unchanged_and_a_cut_one_is_truncated():
    body = jpeg(size=(640, 480), seed=3)
    assert prepared_image(body) is body
    for cut in (len(body) // 2, len(body) - 200):
        with pytest.raises(ImageProblem, match="^truncated image"):
            prepared_image(body[:cut])


def test_a_jpeg_with_a_corrupt_scan_is_damaged_whatever_its_end_marker_says():
    body = corrupt_scan_jpeg()
    assert body.endswith(b"\xff\xd9")
    Image.open(io.BytesIO(body)).load()  # what the check is for: Pillow decodes it (into garbage) without a word
    with pytest.raises(ImageProblem, match="^damaged image: Corrupt JPEG data"):
        prepared_image(body)
    rotated = rotated_jpeg()  # also one that an EXIF orientation would turn, which Pillow decodes whole
    middle = (rotated.index(b"\xff\xda") + len(rotated)) // 2
    with pytest.raises(ImageProblem, match="^damaged image"):
        prepared_image(rotated[:middle] + rotated[middle - 200 : middle] + rotated[middle:])


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_whole_jpegs_of_every_colour_space_and_progressive_ones_pass(mode):
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg(seed=4))).convert(mode).save(buffer, format="JPEG", progressive=mode == "RGB")
    assert prepared_image(buffer.getvalue()) == buffer.getvalue()
    assert prepared_image(buffer.getvalue() + b"trailing bytes after the end marker") is not None


def test_other_formats_are_checked_whole():
    png = io.BytesIO()
    Image.new("RGB", (300, 200), (1, 2, 3)).save(png, format="PNG")
    assert prepared_image(png.getvalue()) == png.getvalue()
    with pytest.raises(ImageProblem, match="^truncated image"):
        prepared_image(png.getvalue()[:-40])
    with pytest.raises(ImageProblem, match="gzip"):
        import gzip

        prepared_image(gzip.compress(jpeg()))
    with pytest.raises(ImageProblem, match="HTML"):
        prepared_image(b"<!doctype html><p>no")


def test_exif_orientation_is_applied_and_animations_give_their_first_frame():
    upright = Image.open(io.BytesIO(prepared_image(rotated_jpeg())))
    assert upright.size == (240, 320)  # stored 320x240, shown turned a quarter
    assert upright.getpixel((200, 160))[0] > 150 and upright.getpixel((40, 160))[2] > 150  # red right, blue left
    first = Image.open(io.BytesIO(prepared_image(animated_gif())))
    assert first.format == "PNG" and first.getpixel((10, 10))[:3] == (220, 20, 20)
