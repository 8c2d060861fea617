"""Blocklists: rows to take down (opt-outs, privacy requests, hash-list matches), named by any of

- `uid`: the row's uid, as the input's uid column holds it;
- `url`: the image URL, compared after `normalize_url`;
- `url_md5`, `url_sha256`: the hex digest of the normalized URL's UTF-8 bytes;
- `md5`, `sha256`: the hex digest of the image's bytes, as img2dataset's `compute_hash` columns hold them.

A blocklist is one or more files: csv or tsv with a header whose columns are named by those kinds (other columns
are ignored, at least one must be a kind), parquet likewise, or txt with one key a line and the kind given with
the file (`{"path": "md5s.txt", "key": "md5"}`). Matching is exact: uids as written (stripped), hashes in lower
case, URLs normalized on both sides. A key that cannot be one of its kind (a hash of the wrong length or not hex)
is refused with its file and row, so that a takedown never silently matches nothing.
"""

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipflow.errors import ClipflowError

KINDS = ("uid", "url", "url_md5", "url_sha256", "md5", "sha256")
HEX_DIGITS = {"url_md5": 32, "url_sha256": 64, "md5": 32, "sha256": 64}
URL_HASHES = {"url_md5": hashlib.md5, "url_sha256": hashlib.sha256}
IMAGE_HASHES = ("md5", "sha256")  # matched against the columns of these names
DEFAULT_PORTS = {"http": 80, "https": 443}
# URLs that normalize_url leaves as they are: http(s), a lower-case host without port or user, a path of printable
# ASCII without a fragment that does not end in an empty query.
PLAIN_URL = r'^https?://[a-z0-9.\-]+/([!"$-~]*[!"$->@-~])?$'

# What normalize_url strips from either end: whitespace (Unicode's too, as str.strip) and control characters.
EDGES = "".join(map(chr, range(0x21))) + "\x7f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
EDGES += "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def normalize_url(url: str) -> str:
    """The form in which URLs are compared: whitespace and control characters stripped from both ends, the scheme
    and host in lower case, a default port (80 for http, 443 for https), the fragment and an empty query (a bare
    `?`) dropped, an empty path made `/`. The path and query stay as written: servers may tell their case and
    percent-encoding apart."""
    url = url.strip(EDGES)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a malformed port or IPv6 host: compared as written
        return url
    netloc = parts.netloc
    if netloc:
        userinfo, at, host = netloc.rpartition("@")
        host = host.lower()
        if port is not None and DEFAULT_PORTS.get(parts.scheme) == port:
            host = host[: host.rindex(":")]
        netloc = f"{userinfo}{at}{host}"
    path = parts.path or ("/" if netloc else "")
    return urlunsplit((parts.scheme, netloc, path, parts.query, ""))


@dataclass
class Blocklist:
    """The keys of a blocklist's files by kind, and what was read: each file's path, sha256 and keys."""

    keys: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in KINDS})
    files: list[dict] = field(default_factory=list)

    @property
    def checksum(self) -> str:
        """The sha256 of the files' sha256s, in the order given: what an audit record names the blocklist by."""
        return hashlib.sha256("".join(entry["sha256"] for entry in self.files).encode()).hexdigest()

    def __len__(self) -> int:
        return sum(len(keys) for keys in self.keys.values())

    def check_columns(self, columns: list[str], where: str) -> None:
        """Refuse image-hash keys that `where` (its `columns`) cannot be matched against."""
        for kind in IMAGE_HASHES:
            if self.keys[kind] and kind not in columns:
                raise ClipflowError(
                    f"{where} has no {kind} column: the blocklist's {len(self.keys[kind])} {kind} keys cannot "
                    f"be matched against it"
                )

    def matches(self, rows: pa.Table) -> np.ndarray:
        """The kind that blocks each row of `rows` (columns uid, url and, where the blocklist holds image hashes,
        md5 and sha256), or "" for a row that no key names: the first kind in KINDS order where several do."""
        found = np.full(rows.num_rows, "", dtype=object)
        normalized = None
        for kind in KINDS:
            column = kind if kind in ("uid", *IMAGE_HASHES) else "url"
            if not self.keys[kind] or column not in rows.column_names:
                continue
            if kind in ("uid", *IMAGE_HASHES):
                values = pc.utf8_trim_whitespace(rows[kind]) if kind == "uid" else pc.utf8_lower(rows[kind])
                keys = pa.array(sorted(self.keys[kind]), pa.string())
                hit = pc.is_in(values, keys).to_numpy(zero_copy_only=False)
            elif kind == "url":
                hit = self._url_matches(rows["url"])
            else:  # a digest a row, in Python
                if normalized is None:
                    normalized = [None if url is None else normalize_url(url) for url in rows["url"].to_pylist()]
                digest, keys = URL_HASHES[kind], self.keys[kind]
                hit = np.array([u is not None and digest(u.encode()).hexdigest() in keys for u in normalized], bool)
            found[(found == "") & hit] = kind
        return found

    def _url_matches(self, urls: pa.ChunkedArray) -> np.ndarray:
        """Which `urls` normalize to a blocked URL: those already in normal form (PLAIN_URL, nearly all of web
        data) compared in Arrow's kernels as they are, the others normalized in Python."""
        keys = pa.array(sorted(self.keys["url"]), pa.string())
        plain = pc.fill_null(pc.match_substring_regex(urls, PLAIN_URL), False).to_numpy(zero_copy_only=False)
        hit = pc.fill_null(pc.is_in(urls, keys), False).to_numpy(zero_copy_only=False) & plain
        others = np.flatnonzero(~plain)
        for position, url in zip(others, urls.take(pa.array(others, pa.int64())).to_pylist()):
            hit[position] = url is not None and normalize_url(url) in self.keys["url"]
        return hit


def read_blocklist(entries: list, base: Path | str = ".") -> Blocklist:
    """The blocklist of `entries` (each a path, or {"path": ..., "key": KIND} for a txt file), relative to
    `base`."""
    blocklist = Blocklist()
    for entry in entries:
        path, kind = (entry, None) if isinstance(entry, str) else (entry.get("path"), entry.get("key"))
        if not isinstance(path, str) or (kind is not None and kind not in KINDS):
            raise ClipflowError(f"blocklist entry {entry!r}: give a path, or {{'path': ..., 'key': one of {KINDS}}}")
        path = Path(base) / path
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ClipflowError(f"{path}: cannot read this blocklist: {error}") from None
        columns = _columns(path, data, kind)
        count = 0
        for name, values in columns.items():
            for row, value in enumerate(values, start=1):
                if value is None or not str(value).strip(EDGES):
                    continue
                blocklist.keys[name].add(_key(name, str(value), path, row))
                count += 1
        blocklist.files.append({"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "keys": count})
    return blocklist


def _columns(path: Path, data: bytes, kind: str | None) -> dict[str, list]:
    """The key columns of one blocklist file, by kind."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if kind is None:
            raise ClipflowError(
                f"{path}: a txt blocklist holds one kind of key: name it, as {{'path': ..., 'key': KIND}}"
            )
        return {kind: data.decode("utf-8", errors="strict").splitlines()}
    if suffix == ".parquet":
        table = pq.read_table(path)
        columns = {name: table[name].to_pylist() for name in table.column_names if name in KINDS}
    elif suffix in (".csv", ".tsv"):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise ClipflowError(f"{path}: not UTF-8 text: {error}") from None
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        records = list(reader)
        names = [name for name in reader.fieldnames or [] if name.strip() in KINDS]
        columns = {name.strip(): [record[name] for record in records] for name in names}
    else:
        raise ClipflowError(f"{path}: a blocklist is csv, tsv, parquet or txt, not {suffix or 'a file without suffix'}")
    if not columns:
        raise ClipflowError(f"{path}: no column named by a key kind ({', '.join(KINDS)})")
    return columns


def _key(kind: str, value: str, path: Path, row: int) -> str:
    value = value.strip(EDGES)
    if kind == "url":
        return normalize_url(value)
    if kind in HEX_DIGITS:
        value = value.lower()
        if len(value) != HEX_DIGITS[kind] or any(c not in "0123456789abcdef" for c in value):
            raise ClipflowError(f"{path}: row {row}: {value[:80]!r} is not a {kind} ({HEX_DIGITS[kind]} hex digits)")
    return value
