"""What one request may ask of the server, and the fixed bounds that keep its memory flat whatever the core count."""

from dataclasses import dataclass


@dataclass
class Limits:
    max_num_images: int = 1000
    max_result_ids: int = 10000
    max_body_bytes: int = 10 * 2**20  # a request body, and an image fetched from an image_url
    allow_private_urls: bool = False
    image_url_timeout: float = 10
    max_batch: int = 64
    precision: str = "auto"
    max_image_pixels: int = 64_000_000  # a decoded query image holds 3-4 bytes a pixel: ~256 MB at most
    decode_workers: int = 2  # query images decoded at once, besides one larger image
    large_image_pixels: int = 16_000_000  # images over this (a 4000x4000 PNG takes ~1 s) take their own lane
    decode_wait_seconds: float = 10  # how long an image may wait for its lane before the answer is a 503
    body_timeout_seconds: float = 30  # a request body not received whole by then is answered 408
    header_timeout_seconds: float = 15  # a connection without a whole request header by then is closed
    public_url: str = ""  # the server's address as clients reach it, for shard_url ("": where it listens)
    max_text_chars: int = 10_000  # CLIP reads 77 tokens, at most 32 characters each: the rest is cut unread
