"""Blocklists (clipflow.blocklist) as files hold them, and `clipflow serve` taking their rows down live: never
returned by a search, listed in /metadata or served as an image, reloaded without a restart when the file
changes, the last good one kept when a changed one cannot be read."""

import hashlib
import json
import random
import time

import pandas as pd
import pyarrow as pa
import pytest

from clipflow.blocklist import Blocklist, normalize_url, read_blocklist
from clipflow.errors import ClipflowError
from clipflow.serve.indices import load_indices
from clipflow.serve.limits import Limits
from served import CAPTIONS, Server, indices  # noqa: F401 - indices is a fixture


def key(row: int) -> str:
    return f"00000000{row:04d}"


def uid(row: int) -> str:
    return f"u{key(row)}"  # as tests/conftest.py's write_shard names the served index's rows


def url(row: int) -> str:
    return f"http://x/{key(row)}.jpg"


@pytest.mark.parametrize(
    "written, normalized",
    [
        (" HTTP://Example.COM:80/Path/A.JPG?Q=1#top ", "http://example.com/Path/A.JPG?Q=1"),
        ("\u3000https://example.com:443\x00", "https://example.com/"),
        ("https://user:Secret@Example.com:8443/a", "https://user:Secret@example.com:8443/a"),
        ("http://example.com/caf%C3%A9.jpg", "http://example.com/caf%C3%A9.jpg"),  # percent-encoding as written
        ("http://[::1/broken", "http://[::1/broken"),  # malformed: compared as written
        ("data:image/png;base64,iVBOR", "data:image/png;base64,iVBOR"),
    ],
)
def test_urls_are_compared_normalized(written, normalized):
    assert normalize_url(written) == normalized
    assert normalize_url(normalized) == normalized


def test_blocklist_files_of_every_format_and_their_quirks(tmp_path):
    (tmp_path / "mixed.csv").write_text(
        "\ufeffuid,url,reason,md5\n"  # a byte-order mark, a column that is no key, an empty cell
        f"{uid(1)} ,,opt-out,\n"
        f",HTTP://X:80/{key(2)}.jpg#frag,privacy,\n"
        f",,hash list,{'AB' * 16}\n"
    )
    (tmp_path / "urls.tsv").write_text(f"url\n\u2003{url(3)}\u2003\n\n")
    pd.DataFrame({"sha256": ["cd" * 32, None]}).to_parquet(tmp_path / "hashes.parquet")
    (tmp_path / "url_md5.txt").write_text(hashlib.md5(url(4).encode()).hexdigest().upper() + "\n\n")
    entries = ["mixed.csv", "urls.tsv", "hashes.parquet", {"path": "url_md5.txt", "key": "url_md5"}]
    blocklist = read_blocklist(entries, tmp_path)
    assert blocklist.keys["uid"] == {uid(1)} and blocklist.keys["url"] == {url(2), url(3)}
    assert blocklist.keys["md5"] == {"ab" * 16} and blocklist.keys["sha256"] == {"cd" * 32}
    assert [entry["keys"] for entry in blocklist.files] == [3, 1, 1, 1] and len(blocklist) == 6
    assert read_blocklist(entries, tmp_path).checksum == blocklist.checksum
    (tmp_path / "urls.tsv").write_text(f"url\n{url(5)}\n")
    assert read_blocklist(entries, tmp_path).checksum != blocklist.checksum

    rows = pa.table(
        {
            "uid": [uid(r) for r in range(7)],
            "url": [url(r).upper().replace("/X/", "/x/") if r == 4 else url(r) for r in range(7)],
            "md5": ["00" * 16, "00" * 16, "00" * 16, "00" * 16, "00" * 16, "00" * 16, "AB" * 16],
        }
    )
    found = read_blocklist(entries, tmp_path).matches(rows)
    # Row 4's URL differs in its path's case: not the URL hashed, not blocked. Row 6 by its image's md5.
    assert list(found) == ["", "uid", "url", "", "", "url", "md5"]
    with pytest.raises(ClipflowError, match="has no sha256 column: the blocklist's 1 sha256 keys"):
        blocklist.check_columns(["uid", "url", "md5"], "the index")


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.csv", "uid,md5\nu1,abc\n", r"bad.csv: row 1: 'abc' is not a md5 \(32 hex digits\)"),
        ("bad.csv", "sha256\n" + "g" * 64 + "\n", "bad.csv: row 1: 'g+' is not a sha256"),
        ("nokeys.csv", "id,link\n1,http://x/\n", "nokeys.csv: no column named by a key kind"),
        ("keys.txt", "u1\n", "keys.txt: a txt blocklist holds one kind of key: name it"),
        ("keys.json", "[]", "keys.json: a blocklist is csv, tsv, parquet or txt"),
    ],
)
def test_a_bad_blocklist_is_refused_naming_its_file_and_row(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ClipflowError, match=message):
        read_blocklist([name], tmp_path)
    with pytest.raises(ClipflowError, match="missing.csv: cannot read this blocklist"):
        read_blocklist(["missing.csv"], tmp_path)


def wait_for(server, condition, what: str):
    deadline = time.monotonic() + 30
    while True:
        health = server.request("/health")[1]
        if condition(health["takedowns"]["demo"]):
            return health["takedowns"]["demo"]
        assert time.monotonic() < deadline, f"the service did not {what}: {health}"
        time.sleep(0.2)


def served_ids(server, **query) -> list[int]:
    status, results = server.knn(indice_name="demo", **query)
    assert status == 200
    return [result["id"] for result in results]


def test_the_service_takes_blocked_rows_down_and_reloads_its_blocklist_live(indices):
    blocklist = indices.parent / "takedowns.csv"
    blocklist.write_text(f"uid,url\n{uid(7)},\n,HTTP://X:80/{key(3)}.jpg#fragment\n")
    (indices.parent / "url_md5.txt").write_text(hashlib.md5(url(11).encode()).hexdigest() + "\n")
    spec = indices.parent / "takedowns.json"
    entries = ["takedowns.csv", {"path": "url_md5.txt", "key": "url_md5"}]
    spec.write_text(json.dumps({"demo": {"index": "index", "shards": "shards", "blocklist": entries}}))
    server = Server(spec)
    try:
        status = wait_for(server, lambda status: status["blocked"] == 3, "load the blocklist")
        assert status["error"] is None and len(status["checksum"]) == 64
        assert served_ids(server, text=CAPTIONS[1], modality="text", num_images=5)[0] == 1
        top = served_ids(server, text=CAPTIONS[7], modality="text", num_images=5)
        assert len(top) == 5 and 7 not in top  # its own caption's best match is gone, and 5 others still come
        everything = served_ids(server, text="a thing", modality="text", num_images=26, num_result_ids=26)
        assert sorted(everything) == sorted(set(range(26)) - {3, 7, 11})
        assert server.request("/metadata", {"ids": [3, 4, 7], "indice_name": "demo"})[1][0]["id"] == 4
        assert len(server.request("/metadata", {"ids": [3, 4, 7], "indice_name": "demo"})[1]) == 1
        assert server.request("/images/demo/7.jpg")[0] == 404 and server.request("/images/demo/4.jpg")[0] == 200

        blocklist.write_text(f"uid\n{uid(4)}\n")  # a new request: row 4 only, 3 and 7 come back
        wait_for(server, lambda status: status["blocked"] == 2, "reload the blocklist")
        assert served_ids(server, text=CAPTIONS[7], modality="text", num_images=1) == [7]
        assert server.request("/images/demo/4.jpg")[0] == 404 and server.request("/images/demo/7.jpg")[0] == 200

        blocklist.write_text("uid,md5\nu1,not-a-hash\n")  # a broken edit: the last good set stays
        status = wait_for(server, lambda status: status["error"] is not None, "report the broken blocklist")
        assert "takedowns.csv: row 1: 'not-a-hash' is not a md5" in status["error"] and status["blocked"] == 2
        assert server.request("/images/demo/4.jpg")[0] == 404
        assert "the blocklist was not reloaded" in server.log_text()
    finally:
        server.stop()


def test_image_hash_keys_need_the_hash_columns_in_the_index(indices):
    (indices.parent / "hashes.txt").write_text("ab" * 32 + "\n")
    spec = indices.parent / "hashes.json"
    spec.write_text(json.dumps({"demo": {"index": "index", "blocklist": [{"path": "hashes.txt", "key": "sha256"}]}}))
    with pytest.raises(ClipflowError, match="index 'demo': index 'demo''s metadata has no sha256 column"):
        load_indices(spec, Limits())


def test_the_fast_url_match_agrees_with_normalizing_every_url():
    """Rows already in normal form are matched in Arrow's kernels as written; on URLs built to break that
    (case, ports, users, fragments, empty queries, Unicode and control characters) the result must be what
    normalizing every URL gives."""
    rng = random.Random(3)
    characters = [chr(c) for c in range(0x21, 0x7F)] + ["\u3000", "\x00", " ", "é", "#", "?", "?"]
    urls = []
    for _ in range(20_000):
        host = "".join(rng.choice("abcz09.-" if rng.random() < 0.8 else "aZ:@[]") for _ in range(rng.randint(1, 6)))
        path = "".join(rng.choice(characters) for _ in range(rng.randint(0, 10)))
        urls.append(
            rng.choice(["http://", "https://", "HTTPS://", "ftp://"]) + host + rng.choice(["/", "", ":80/"]) + path
        )
    blocked = {normalize_url(u) for u in rng.sample(urls, 2_000)}
    blocklist = Blocklist()
    blocklist.keys["url"] = blocked
    expected = [normalize_url(u) in blocked for u in urls]
    assert sum(expected) >= 2_000 and [kind == "url" for kind in blocklist.matches(pa.table({"url": urls}))] == expected
