import gzip
import hashlib
import json

import pandas as pd
import pyarrow as pa
import pytest

from clipflow.errors import ClipflowError
from clipflow.ingest.reader import Columns, find_sources, read_batches

URLS = ["http://a.example/1.jpg", "http://a.example/2.jpg", "http://a.example/3.jpg"]
CAPTIONS = ["one", "two, with a comma", "three"]
DEFAULT = Columns(url="url", caption="caption", uid=None, keep=())


def read_all(path, columns=DEFAULT, fmt="auto"):
    (source,) = find_sources([str(path)], fmt)
    return pa.concat_tables([batch for batch, _ in read_batches(source, columns)]).to_pandas()


@pytest.mark.parametrize("extension", ["parquet", "csv", "tsv", "jsonl", "csv.gz"])
def test_every_format_gives_the_same_rows(tmp_path, extension):
    frame = pd.DataFrame({"url": URLS, "caption": CAPTIONS, "width": [10, 20, 30]})
    path = tmp_path / f"meta.{extension}"
    if extension == "parquet":
        frame.to_parquet(path)
    elif extension == "csv":
        frame.to_csv(path, index=False)
    elif extension == "csv.gz":
        with gzip.open(path, "wt") as f:
            frame.to_csv(f, index=False)
    elif extension == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    rows = read_all(path, Columns("url", "caption", None, ("width",)))
    assert rows["url"].tolist() == URLS
    assert rows["caption"].tolist() == CAPTIONS
    assert [int(w) for w in rows["width"]] == [10, 20, 30]
    assert rows["source_row"].tolist() == [0, 1, 2]


def test_plain_url_list(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("\n".join(URLS) + "\n")
    rows = read_all(path, Columns("url", None, None, ()))
    assert rows["url"].tolist() == URLS
    assert rows["caption"].tolist() == ["", "", ""]


def test_column_mapping_and_given_uids(tmp_path):
    frame = pd.DataFrame({"URL": URLS, "TEXT": CAPTIONS, "key": ["u1", "u2", "u3"], "sha": ["x", "y", "z"]})
    frame.to_parquet(tmp_path / "m.parquet")
    rows = read_all(tmp_path / "m.parquet", Columns("URL", "TEXT", "key", ("sha",)))
    assert list(rows.columns) == ["url", "caption", "uid", "sha", "source_row"]
    assert rows["uid"].tolist() == ["u1", "u2", "u3"]
    assert rows["caption"].tolist() == CAPTIONS


def test_generated_uids_are_stable_128_bit_hashes_of_url_and_caption(tmp_path):
    pd.DataFrame({"url": URLS, "caption": CAPTIONS}).to_csv(tmp_path / "m.csv", index=False)
    first = read_all(tmp_path / "m.csv")["uid"].tolist()
    pd.DataFrame({"url": URLS[::-1], "caption": CAPTIONS[::-1]}).to_parquet(tmp_path / "r.parquet")
    again = read_all(tmp_path / "r.parquet")["uid"].tolist()[::-1]
    assert first == again  # depends on the row's content only, not its file, format or position
    expected = hashlib.md5(f"{URLS[0]}\x1f{CAPTIONS[0]}".encode()).hexdigest()  # documented: anyone can recompute it
    assert first[0] == expected and len(set(first)) == 3


def test_glob_expands_in_sorted_order(tmp_path):
    for name, url in [("b.csv", URLS[1]), ("a.csv", URLS[0]), ("c.csv", URLS[2])]:
        pd.DataFrame({"url": [url], "caption": ["x"]}).to_csv(tmp_path / name, index=False)
    sources = find_sources([str(tmp_path / "*.csv")])
    assert [s.path.rsplit("/", 1)[1] for s in sources] == ["a.csv", "b.csv", "c.csv"]


def test_non_utf8_caption_is_kept_with_replacement_characters(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"url,caption\nhttp://a/1.jpg,caf\xe9 au lait\n")
    assert read_all(path)["caption"].tolist() == ["caf\ufffd au lait"]


def test_missing_url_column_names_file_and_columns(tmp_path):
    pd.DataFrame({"link": URLS, "caption": CAPTIONS}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(
        ClipflowError, match=r"m\.csv: no column 'url' for input\.url_col; its columns are \['link', 'caption'\]"
    ):
        read_all(tmp_path / "m.csv")


def test_missing_caption_column_suggests_null(tmp_path):
    pd.DataFrame({"url": URLS}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ClipflowError, match="set input.caption_col: null"):
        read_all(tmp_path / "m.parquet")


def test_missing_kept_column_names_its_key(tmp_path):
    pd.DataFrame({"url": URLS, "caption": CAPTIONS}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(ClipflowError, match=r"no column 'width' for input\.keep_cols\[0\]"):
        read_all(tmp_path / "m.parquet", Columns("url", "caption", None, ("width",)))


def test_empty_uid_names_the_row(tmp_path):
    pd.DataFrame({"url": URLS, "caption": CAPTIONS, "uid": ["a", "", "c"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ClipflowError, match=r"m\.csv: row 1 has an empty uid in column 'uid'"):
        read_all(tmp_path / "m.csv", Columns("url", "caption", "uid", ()))


def test_unreadable_file_names_file_and_format(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"this is not parquet at all")
    with pytest.raises(ClipflowError, match=r"broken\.parquet: cannot read as parquet"):
        read_all(path)


def test_malformed_jsonl_names_the_file_and_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"url": URLS[0], "caption": "x"}) + "\n\n{not json\n")
    with pytest.raises(ClipflowError, match=r"m\.jsonl: cannot read as jsonl at line 3"):
        read_all(path)


@pytest.mark.parametrize("suffix, sep", [("csv", ","), ("tsv", "\t")])
def test_malformed_csv_names_the_file_and_line(tmp_path, suffix, sep):
    """The record with one field too many is on line 5: a quoted caption before it spans lines 2 and 3."""
    rows = ["url,caption", 'http://a/1.jpg,"two\nlines"', "http://a/2.jpg,plain", "http://a/3.jpg,three,extra"]
    path = tmp_path / f"m.{suffix}"
    path.write_text("\n".join(row.replace(",", sep) for row in rows) + "\n")
    expected = rf"m\.{suffix}: cannot read as {suffix} at line 5 \(3 fields, the header has 2\)"
    with pytest.raises(ClipflowError, match=expected):
        read_all(path)


def test_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(ClipflowError, match=r"input\.paths: '.*nothing-\*\.parquet' matches no file"):
        find_sources([str(tmp_path / "nothing-*.parquet")])


def test_unknown_extension_asks_for_format(tmp_path):
    (tmp_path / "data.bin").write_text("x")
    with pytest.raises(ClipflowError, match="set input.format"):
        find_sources([str(tmp_path / "data.bin")])
    assert find_sources([str(tmp_path / "data.bin")], "csv")[0].format == "csv"


def test_fsspec_urls_are_read(tmp_path):
    import fsspec

    with fsspec.open("memory://bucket/meta.parquet", "wb") as f:
        pd.DataFrame({"url": URLS, "caption": CAPTIONS}).to_parquet(f)
    rows = read_all("memory://bucket/meta.parquet")
    assert rows["url"].tolist() == URLS
    (globbed,) = find_sources(["memory://bucket/*.parquet"])
    assert globbed.path.startswith("memory://") and globbed.path.endswith("/bucket/meta.parquet")


def test_a_nul_in_a_caption_becomes_a_space_and_keeps_what_follows(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"url,caption\nhttp://a/1.jpg,red car\x00 parked\nhttp://a/1.jpg,red car\x00 moving\x7f\n")
    rows = read_all(path)
    assert rows["caption"].tolist() == ["red car  parked", "red car  moving "]


def test_a_url_column_of_numbers_is_refused_before_any_work(tmp_path):
    path = tmp_path / "ints.parquet"
    pd.DataFrame({"url": [1, 2], "caption": ["a", "b"]}).to_parquet(path)
    with pytest.raises(ClipflowError, match=r"ints.parquet: column 'url' \(input.url_col\) holds int64 values"):
        read_all(path)
    lines = tmp_path / "mixed.jsonl"
    lines.write_text('{"url": "http://a/1.jpg", "caption": "a"}\n\n{"url": 7, "caption": "b"}\n')
    with pytest.raises(ClipflowError, match=r"mixed.jsonl: row 1 \(line 3\): column 'url' .* holds 7, a int"):
        read_all(lines)
