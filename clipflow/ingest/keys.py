"""Row identity: one 128-bit key per (url, caption), used for deduplication and derived uids."""

import hashlib

import numpy as np

KEY_DTYPE = np.dtype("S16")


def row_key(url: str, caption: str) -> bytes:
    # The unit separator cannot occur in a URL, so ("a b", "c") and ("a", "b c") never collide.
    return hashlib.blake2b(f"{url}\x1f{caption}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


def row_keys(urls, captions) -> np.ndarray:
    return np.array([row_key(u, c) for u, c in zip(urls, captions)], dtype=KEY_DTYPE)


def key_to_uid(key: bytes) -> str:
    """The 32-hex-digit uid (DataComp's form) of a key; numpy strips trailing zero bytes, so pad back."""
    return key.ljust(16, b"\0").hex()
