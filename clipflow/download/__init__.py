"""Download: fetch each planned shard with img2dataset, then account for every input row."""
