"""Row identity: one 128-bit key per (url, caption), used for deduplication and as the derived uid.

The key is the md5 of `url + U+001F + caption` in UTF-8; the uid is its 32 hex digits (DataComp's form), so
any tool can reproduce it: `hashlib.md5(f"{url}\\x1f{caption}".encode()).hexdigest()`. The unit separator
cannot occur in a URL, so ("a b", "c") and ("a", "b c") never collide. DuckDB's vectorized md5 computes it at
~0.5 µs a row, against ~3 µs for hashlib through Python objects (strings made from Arrow's columns, then hashed).
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KEY_DTYPE = np.dtype("S16")
_connection = None


def _duckdb():
    global _connection  # one per process: planning workers each hash on their own core
    if _connection is None:
        import duckdb  # here: jobs that only read a plan do without it

        _connection = duckdb.connect(config={"threads": 1})
    return _connection


def row_keys(urls: pa.Array, captions: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(keys, uids) of rows whose url and caption are strings without nulls."""
    if len(urls) == 0:
        return np.empty(0, KEY_DTYPE), pa.array([], pa.string())
    joined = pa.table({"row": pc.binary_join_element_wise(urls, captions, "\x1f")})  # Arrow joins faster
    hashed = _duckdb().from_arrow(joined).project("md5(row) AS uid").to_arrow_table()
    uids = hashed["uid"].combine_chunks().cast(pa.string())
    digits = uids.buffers()[2].to_pybytes()  # 32 hex digits a row, back to back
    offsets = np.frombuffer(uids.buffers()[1], np.int32)[uids.offset : uids.offset + len(uids) + 1]
    keys = np.frombuffer(bytes.fromhex(digits[offsets[0] : offsets[-1]].decode("ascii")), KEY_DTYPE)
    return keys, uids
