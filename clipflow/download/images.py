"""What a downloaded body must be before img2dataset's resizer may store it: a whole image, upright, one frame.

img2dataset decodes with OpenCV, which fills a truncated JPEG's missing half with grey, decodes a JPEG whose
scan data is corrupt into garbage (libjpeg only warns: "Corrupt JPEG data: ... extraneous bytes"), and reports
success; it also ignores EXIF orientation and cannot read GIFs. `CheckedResizer` wraps img2dataset's `Resizer`
(its downloader takes any resizer) and first checks each body:
- a JPEG is decoded by libjpeg-turbo (simplejpeg) at 1/8 scale, stopping on its first warning: that reads every
  entropy-coded byte, so a cut or corrupt scan fails whatever its end marker says, at about half the cost of
  the resizer's own decode (`bench/image_check.py`); other formats are decoded by Pillow, which refuses
  truncated data;
- an image with an EXIF orientation, an animated image (its first frame is kept) or a format OpenCV does not
  read is handed on as a lossless PNG of the upright first frame; everything else is handed on unchanged.
"""

import io
import warnings

import simplejpeg
from PIL import Image, ImageFile, ImageOps

ORIENTATION = 0x0112  # EXIF tag
OPENCV_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF"}


class ImageProblem(ValueError):
    pass


def prepared_image(body: bytes) -> bytes:
    """`body` itself, or a PNG of its upright first frame, when it decodes completely; else ImageProblem."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # another library may have turned it on for the process
    if not body:
        raise ImageProblem("empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd metadata; the decode result is what counts
            image = Image.open(io.BytesIO(body))
            orientation = image.getexif().get(ORIENTATION, 1)
            animated = getattr(image, "is_animated", False)
            if image.format == "JPEG":
                check_jpeg(body)
                if orientation in (0, 1):
                    return body
            image.load()
            if orientation in (0, 1) and not animated and image.format in OPENCV_FORMATS:
                return body
            upright = ImageOps.exif_transpose(image)
    except ImageProblem:
        raise
    except Image.DecompressionBombError as error:  # Pillow's pixel limit bounds each thread's memory
        raise ImageProblem(f"image area too large: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageProblem(_reason(error, body)) from error
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info)
    upright = upright.convert("RGBA" if has_alpha else "L" if upright.mode in ("L", "1") else "RGB")
    out = io.BytesIO()
    upright.save(out, format="PNG", compress_level=1)
    return out.getvalue()


# libjpeg-turbo decodes these colour spaces only into themselves (or their like); all others into RGB
JPEG_DECODE_SPACES = {"Gray": "GRAY", "CMYK": "CMYK", "YCCK": "CMYK"}


def check_jpeg(jpeg: bytes) -> None:
    """ImageProblem unless every entropy-coded byte of `jpeg` decodes without a libjpeg warning. Decoding at 1/8
    scale (one pixel per 8x8 block) still reads all of them; a whole image followed by other bytes passes, as the
    decoder stops at its end marker."""
    try:
        colour_space = simplejpeg.decode_jpeg_header(jpeg, strict=True)[2]
        simplejpeg.decode_jpeg(
            jpeg, colorspace=JPEG_DECODE_SPACES.get(colour_space, "RGB"), min_height=1, min_width=1, strict=True
        )
    except ValueError as error:  # simplejpeg raises every libjpeg error and warning as ValueError
        message = str(error)
        cut = message.startswith("Premature end of JPEG file")
        raise ImageProblem(f"{'truncated' if cut else 'damaged'} image: {message}") from None


def _reason(error: Exception, body: bytes) -> str:
    message = str(error)
    if "truncated" in message.lower() or isinstance(error, EOFError):
        return f"truncated image: {message}"
    if "cannot identify image file" in message:
        start = body[:2]
        if start == b"\x1f\x8b":
            return "not an image: a gzip-compressed body"
        if body.lstrip()[:1] == b"<":
            return "not an image: the body is HTML or XML"
        return "not a decodable image"
    return f"damaged image: {message}"


class CheckedResizer:
    """img2dataset's resizer, given only bodies that `prepared_image` accepts; the others fail with its reason."""

    def __init__(self, resizer):
        self.resizer = resizer

    def __call__(self, img_stream, blurring_bbox_list=None):
        try:
            prepared = prepared_image(img_stream.read())
        except ImageProblem as problem:
            return None, None, None, None, None, str(problem)
        return self.resizer(io.BytesIO(prepared), blurring_bbox_list)
