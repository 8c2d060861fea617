"""A DataComp-like release built to break a reimplementation of DataComp's baselines: metadata parquets with an
.npz beside each, and the baselines' asset files, full of what real web metadata holds.

The quirks: all-caps and non-English captions; control characters (NUL, U+001F, U+0085, DEL, ...), Unicode spaces
(NBSP, U+2000-U+200A, U+3000, ...), newlines, tabs and carriage returns inside captions; empty, one-word and
five-character captions; exact (url, caption) duplicates under new uids, in the same file and in another; ftp,
file, data, javascript, scheme-less, hostless and empty URLs; scores rounded to three decimals (ties at any cut),
float32(0.28) and the float32 just below it; original sizes at the 200 px and 3:1 edges, and zero; image
embeddings tied exactly between two centroids (one near ImageNet, one not, in both orders); caption words that
WordNet knows only through an inflection, a capital or an exception list.

Shared by tests/curate/test_datacomp_parity.py and tests/data/datacomp/make_expected.py, which runs DataComp's own
code on the same release: both build it from these functions, so it is the same bytes.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

WIDTH = 384  # ViT-S-32's width: the model the workflow names for these precomputed embeddings
FILES = 3
ROWS_PER_FILE = 500
CENTROIDS = 12
IMAGENET_CLUSTERS = (0, 2, 3, 5, 7)  # the centroids ImageNet's features sit nearest to
IMAGENET_FILES = [f"in1k_clip_vit_l14_{i}.pt" for i in range(5)]  # DataComp's five

ENGLISH = [
    "a red fox standing in the snow",
    "two children flying kites in a park",
    "a lighthouse on a rocky coast at dusk",
    "golden retriever puppy playing on the grass",
    "a bicycle leaning against an old brick wall",
    "a cup of coffee next to a laptop",
    "a bowl of fruit on a wooden table",
    "an old map of a harbour town",
    "foxes running across a frozen field",
    "the best deals on kitchen furniture this week",
    "download free wallpaper for your desktop",
    "a man riding a horse along the beach",
    "vintage poster of a jazz festival in new orleans",
    "close up of a yellow flower with a bee",
    "Fox, kite and bicycle",
]
OTHER_LANGUAGES = [
    "ein roter Fuchs steht im Schnee",
    "un renard roux dans la neige",
    "un zorro rojo en la nieve del bosque",
    "una volpe rossa nella neve",
    "красная лиса стоит на снегу",
    "雪の中に立つ赤いキツネ",
    "站在雪地里的红狐狸",
    "een rode vos in de sneeuw",
    "raposa vermelha na neve",
    "kırmızı bir tilki karda duruyor",
]
SHORT = ["", " ", "fox", "a fox", "two words", "abcde", "abcdef", "kites", "\n", "a\nb", "fox\x00kite"]
CONTROL = ["\x00", "\x1f", "\x85", "\x7f", "\x07", "\x9c", "\x1c"]
SPACES = ["\xa0", "\u2000", "\u2003", "\u2009", "\u200a", "\u3000", "\u202f", "\u205f", "\u1680", "\x0b", "\x0c"]
LINE_BREAKS = ["\n", "\r\n", "\r", "\t", "\n\n"]
BAD_URLS = [
    "ftp://images.example.com/fox.jpg",
    "www.example.com/fox.jpg",
    "file:///etc/passwd",
    "",
    "javascript:alert(1)",
    "http://",
    "data:image/png;base64,iVBORw0KGgo=",
    "images.example.com:8080/a.jpg",
]
SIZE_EDGES = [(200, 200), (199, 400), (400, 199), (600, 200), (200, 600), (601, 200), (200, 601), (603, 201),
              (0, 300), (300, 0), (1, 1), (199, 199), (201, 201), (4000, 1334), (1333, 4000)]  # fmt: skip


def _caption(rng: np.random.Generator) -> str:
    kind = rng.choice(["plain", "caps", "other", "short", "control", "spaces", "breaks", "mixed"],
                      p=[0.3, 0.1, 0.12, 0.08, 0.1, 0.12, 0.1, 0.08])  # fmt: skip
    words = str(rng.choice(ENGLISH)).split(" ")
    if kind == "plain":
        return " ".join(words)
    if kind == "caps":
        return " ".join(words).upper() + str(rng.choice(["", "!", " 2023"]))
    if kind == "other":
        return str(rng.choice(OTHER_LANGUAGES))
    if kind == "short":
        return str(rng.choice(SHORT))
    if kind == "control":
        at = int(rng.integers(len(words) + 1))
        glue = str(rng.choice(CONTROL))
        return " ".join(words[:at]) + glue + " ".join(words[at:])
    if kind == "spaces":
        gaps = [str(rng.choice(SPACES)) if rng.random() < 0.5 else " " for _ in words[1:]]
        return words[0] + "".join(gap + word for gap, word in zip(gaps, words[1:]))
    if kind == "breaks":
        at = int(rng.integers(1, len(words)))
        return " ".join(words[:at]) + str(rng.choice(LINE_BREAKS)) + " ".join(words[at:])
    return " " + str(rng.choice(OTHER_LANGUAGES)) + " " + " ".join(words).title() + " "


def _size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < 0.2:
        return SIZE_EDGES[int(rng.integers(len(SIZE_EDGES)))]
    return int(rng.integers(64, 2048)), int(rng.integers(64, 2048))


def _scores(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(l14, b32) float32 scores rounded to three decimals; some b32 at float32(0.28) and one ulp below it."""
    l14 = np.round(rng.normal(0.22, 0.05, rows), 3).astype(np.float32)
    b32 = np.round(rng.normal(0.28, 0.03, rows), 3).astype(np.float32)
    at = rng.random(rows)
    b32[at < 0.04] = np.float32(0.28)
    b32[(at >= 0.04) & (at < 0.08)] = np.nextafter(np.float32(0.28), np.float32(0))
    return l14, b32


def centroids() -> np.ndarray:
    """Integer centroids of equal norm on disjoint coordinates: sums of their products are exact in float32 in
    any order, so a vector halfway between two is an exact tie (the lower index wins, in numpy and torch)."""
    found = np.zeros((CENTROIDS, WIDTH), np.float32)
    signs = np.random.default_rng(7).choice([-1.0, 1.0], size=(CENTROIDS, 8))
    for k in range(CENTROIDS):
        found[k, k * 8 : k * 8 + 8] = signs[k]
    return found


def _unit16(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors in float16, as DataComp's .npz holds them."""
    vectors = vectors.astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def _image_embeddings(rng: np.random.Generator, rows: int) -> np.ndarray:
    pool = centroids()
    near = rng.integers(CENTROIDS, size=rows)
    vectors = 0.3 * rng.normal(size=(rows, WIDTH)) + pool[near]
    tied = np.flatnonzero(rng.random(rows) < 0.08)
    outside = [k for k in range(CENTROIDS) if k not in IMAGENET_CLUSTERS]
    for row in tied:  # halfway between an ImageNet cluster and another, the lower index either one
        vectors[row] = pool[rng.choice(IMAGENET_CLUSTERS)] + pool[rng.choice(outside)]
    return _unit16(vectors)


def _uid(rng: np.random.Generator) -> str:
    highs = [0, 1, 2**63, 2**64 - 1, int(rng.integers(2**63))]  # leading zeros, the high bit
    high = highs[int(rng.integers(len(highs)))]
    return f"{high:016x}{int(rng.integers(2**63)) * 2 + int(rng.integers(2)):016x}"


def preset_input() -> dict:
    """The datacomp presets' input section (config/presets/datacomp_small.yaml), which reads data/metadata."""
    preset = Path(__file__).parents[2] / "config" / "presets" / "datacomp_small.yaml"
    return yaml.safe_load(preset.read_text())["input"]


def release_files(image_server: str = "http://127.0.0.1:9") -> list[tuple[pd.DataFrame, dict]]:
    """The release: per metadata file, its rows and its .npz arrays."""
    rng = np.random.default_rng(20261202)
    made = []
    for part in range(FILES):
        rows = ROWS_PER_FILE
        captions = [_caption(rng) for _ in range(rows)]
        urls = [f"{image_server}/img/{part}/{n}.jpg" for n in range(rows)]
        for n in np.flatnonzero(rng.random(rows) < 0.03):
            urls[n] = str(rng.choice(BAD_URLS))
        sizes = [_size(rng) for _ in range(rows)]
        l14, b32 = _scores(rng, rows)
        frame = pd.DataFrame(
            {
                "uid": [_uid(rng) for _ in range(rows)],
                "url": urls,
                "text": captions,
                "original_width": np.array([w for w, _ in sizes], np.int64),
                "original_height": np.array([h for _, h in sizes], np.int64),
                "clip_b32_similarity_score": b32,
                "clip_l14_similarity_score": l14,
                "face_bboxes": [[[0.1, 0.1, 0.3, 0.3]] if n % 7 == 0 else [] for n in range(rows)],
                "sha256": [f"{part:04x}{n:060x}" for n in range(rows)],
            }
        )
        arrays = {
            "l14_img": _image_embeddings(rng, rows),
            "l14_txt": _unit16(rng.normal(size=(rows, WIDTH))),
            "b32_img": _unit16(rng.normal(size=(rows, WIDTH))),
            "b32_txt": _unit16(rng.normal(size=(rows, WIDTH))),
        }
        made.append((frame, arrays))
    # Exact (url, caption) duplicates under new uids, among the file's rows: of its own rows and an earlier file's.
    for part, (frame, arrays) in enumerate(made):
        donors = [made[part], made[part - 1]] if part else [made[part]]
        frames, parts = [frame], [arrays]
        for donor_frame, donor_arrays in donors:
            picked = rng.choice(len(donor_frame), size=8, replace=False)
            frames.append(donor_frame.iloc[picked].assign(uid=[_uid(rng) for _ in picked]))
            parts.append({name: donor_arrays[name][picked] for name in donor_arrays})
        order = rng.permutation(sum(len(f) for f in frames))
        made[part] = (
            pd.concat(frames, ignore_index=True).iloc[order].reset_index(drop=True),
            {name: np.concatenate([p[name] for p in parts])[order] for name in arrays},
        )
    return made


def write_release(folder: Path, image_server: str = "http://127.0.0.1:9") -> None:
    """The metadata folder as DataComp's download_upstream.py lays it out: NAME.parquet with NAME.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, (frame, arrays) in enumerate(release_files(image_server)):
        name = f"{part:04d}{'f' * 28}"  # DataComp names files by a hash
        frame.to_parquet(folder / f"{name}.parquet", index=False)
        np.savez(folder / f"{name}.npz", **arrays)


# A small WordNet: (part of speech, lemmas). The list keeps fox, kite, lighthouse, retriever and bicycle.
POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
WORDNET = [
    *[("n", [w]) for w in ["fox", "kite", "lighthouse", "coffee", "snow", "wall", "puppy", "fruit", "bowl", "map"]],
    ("n", ["retriever", "golden_retriever"]),
    ("n", ["bicycle", "bike"]),
    ("n", ["child", "kid"]),
    ("n", ["horse"]),
    *[("v", [w]) for w in ["stand", "fly", "lean", "map", "run"]],
    *[("a", [w]) for w in ["red", "old", "golden", "small"]],
]
IN21K = ["fox", "kite", "lighthouse", "retriever", "bicycle", "horse"]


def write_wordnet(root: Path) -> dict:
    """WordNet's database files, as nltk reads them, at root/corpora/wordnet (the layout nltk.download writes);
    returns each synset's offset by (part of speech, first lemma). Each part of speech starts at its own
    offset, so no two synsets share one."""
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    (folder / "lexnames").write_text("00\tadj.all\t3\n01\tadv.all\t4\n02\tnoun.Tops\t1\n03\tverb.body\t2\n")
    offsets, index = {}, {}
    for start, (pos, name) in enumerate(POS_FILES.items()):
        header = "  1 A small WordNet 3.0 Copyright 2006 by Princeton University, written by a test\n"
        lines = [header, "  2" + " " * (start * 1000 + 996 - len(header)) + "\n"]
        at = sum(len(line) for line in lines)
        for synset_pos, lemmas in WORDNET:
            if synset_pos != pos:
                continue
            words = " ".join(f"{lemma} 0" for lemma in lemmas)
            line = f"{at:08d} {'02' if pos == 'n' else '00'} {pos} {len(lemmas):02x} {words} 000 | a test synset\n"
            offsets[(pos, lemmas[0])] = at
            for lemma in lemmas:
                index.setdefault(lemma, []).append(at)
            lines.append(line)
            at += len(line)
        (folder / f"data.{name}").write_text("".join(lines))
        entries = sorted((lemma, found) for lemma, found in index.items())
        (folder / f"index.{name}").write_text(
            "".join(f"{lemma} {pos} {len(o)} 0 {len(o)} 0 {' '.join(f'{x:08d}' for x in o)}\n" for lemma, o in entries)
        )
        index.clear()
        (folder / f"{name}.exc").write_text("children child\n" if pos == "n" else "")
    for name in ("index.sense", "cntlist.rev"):
        (folder / name).write_text("")
    return offsets


def write_assets(folder: Path) -> None:
    """DataComp's asset files for its text- and image-based baselines, in their formats: an nltk_data folder with
    WordNet and the ImageNet-21k synset list; the pool's centroids (a torch-saved numpy array) and ImageNet-1k's
    image features (torch-saved dicts), which sit near IMAGENET_CLUSTERS."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets = write_wordnet(folder / "nltk_data")
    (folder / "imagenet21k_wordnet_ids.txt").write_text("".join(f"n{offsets['n', w]:08d}\n" for w in IN21K))
    pool = centroids()
    torch.save(pool, folder / "small_centroids.pt")
    rng = np.random.default_rng(3)
    for name, cluster in zip(IMAGENET_FILES, IMAGENET_CLUSTERS):
        features = pool[[cluster] * 4] + 0.2 * rng.normal(size=(4, WIDTH))
        torch.save({"image_features": torch.from_numpy(_unit16(features))}, folder / name)
