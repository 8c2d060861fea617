"""The `clipflow` command."""

import argparse
import functools
import json
import logging
import os
import sys
from pathlib import Path

from clipflow import storage
from clipflow.errors import ClipflowError
from clipflow.index.vectors import RERANK_FACTOR

RERANK_HELP = (
    "an approximate index is searched for this many times k candidates, ordered by exact similarity to the stored "
    "embeddings (1: no re-ranking)"
)


def _plan(args) -> None:
    from clipflow.config import load_config
    from clipflow.ingest.planner import make_plan

    plan = make_plan(load_config(args.config), args.plan_dir)
    totals = plan.totals()
    print(
        f"{len(plan.shards)} shards; {totals['rows']:,} input rows: {totals['planned']:,} planned, "
        f"{totals['duplicates']:,} duplicates and {totals['invalid']:,} invalid rows dropped"
    )


def _query(args) -> None:
    from clipflow.search.query import format_results, run_query

    results = run_query(args.index, args.text, args.image, args.modality, args.k, args.rerank_factor)
    print(format_results(results, args.format))


def _filter(args) -> None:
    from clipflow.search.export import filter_index

    counts = filter_index(
        args.index,
        args.shards,
        args.output,
        args.text,
        args.image,
        args.modality,
        args.k,
        args.threshold,
        args.rerank_factor,
    )
    print(
        f"{counts['matches']} matches written to {args.output}/matches.parquet, "
        f"{counts['images']} images to {args.output}/images ({counts['images_missing']} not in the shards)"
    )


def _serve(args) -> None:
    from clipflow.serve.app import serve
    from clipflow.serve.limits import Limits

    limits = Limits(
        max_num_images=args.max_num_images,
        max_result_ids=args.max_result_ids,
        max_body_bytes=args.max_body_mb * 2**20,
        allow_private_urls=args.allow_private_urls,
        precision=args.precision,
        public_url=args.public_url,
        body_timeout_seconds=args.body_timeout,
        header_timeout_seconds=args.header_timeout,
    )
    serve(args.indices, args.host, args.port, limits)


def _verify(args) -> None:
    from clipflow.index.folder import RECORDED, folder_records, infos_path
    from clipflow.shards import verify_folder

    if storage.is_url(args.folder):
        _verify_url(args.folder.rstrip("/"), args.remove_damaged)
        return
    folder = Path(args.folder)
    batches = sorted(folder.glob("batches/*.json"))[:1]
    stored_at = json.loads(batches[0].read_text()).get("bulk") if batches else None
    if stored_at:  # a shards folder whose shards are kept on bulk storage (storage.bulk)
        print(f"{folder}: its shards are kept in {stored_at}: checked there")
        _verify_url(stored_at, args.remove_damaged)
        return
    if any(infos_path(folder, name).exists() for name in RECORDED):
        _verify_records(folder_records(folder), beside=True, remove=args.remove_damaged, what="index")
        return
    if (folder / "info").is_dir():  # an embeddings folder: a record per chunk
        records = sorted((folder / "info").glob("*.json"))
        _verify_records(records, beside=False, remove=args.remove_damaged, what="embedding")
        return
    _report_shards(*verify_folder(folder, remove=args.remove_damaged), folder, args.remove_damaged)


def _report_shards(damaged: dict[str, str], checked: int, folder, removed: bool) -> None:
    for shard, why in damaged.items():
        print(f"{shard}: damaged, {why}" + (" (removed)" if removed else ""))
    print(f"{checked} complete shards checked in {folder}: {len(damaged)} damaged")
    if damaged and not removed:
        print("clipflow verify --remove-damaged removes them; the next workflow run downloads them again")
    if damaged:
        sys.exit(1)


def _verify_records(records: list, beside: bool, remove: bool, what: str) -> None:
    """Files against the sizes and sha256 their records list (relative to the record's folder, or with `beside`
    false to the folder above it); with `remove`, a damaged file's record goes, so that the next run writes it
    again."""
    from clipflow.files import record_damage

    damaged, listings = {}, {}
    for record in records:
        written = json.loads(record.read_text())
        if written.get("bulk"):  # its files are kept on bulk storage: checked there, by one listing of it
            url = written["bulk"]
            listings[url] = listings[url] if url in listings else storage.listing(url)
            damaged[str(record)] = storage.listed_damage(url, listings[url], written, deep=True)
        else:
            root = record.parent if beside else record.parent.parent
            damaged[str(record)] = record_damage(written, root, deep=True)
        if damaged[str(record)] and remove:
            record.unlink()
    _report_damage(damaged, remove, what)


def _verify_url(url: str, remove: bool) -> None:
    """An index folder or a shards folder on object storage, as a local one is checked: the sizes from one
    listing."""
    from clipflow.bulk import verify_stored_shards

    present = storage.listing(url)
    if "metadata.infos.json" not in present and any(name.endswith("_stats.json") for name in present):
        _report_shards(*verify_stored_shards(url, remove, present), url, remove)
        return
    records = storage.index_record_names(present)
    if not records:
        raise ClipflowError(
            f"{url}: nothing to verify (an index folder holds metadata.infos.json, a shards folder *_stats.json)"
        )
    damaged = {}
    for name in records:
        damaged[f"{url}/{name}"] = storage.record_damage_at(url, present, name)
        if damaged[f"{url}/{name}"] and remove:
            storage.remove(f"{url}/{name}")
    _report_damage(damaged, remove, "index")


def _report_damage(damaged: dict[str, list[str]], removed: bool, what: str) -> None:
    """Each record's problems, a count, and an exit status of 1 where any is damaged."""
    for record, problems in damaged.items():
        if problems:
            print(f"{record}: damaged, {'; '.join(problems)}" + (" (record removed)" if removed else ""))
    count = sum(bool(problems) for problems in damaged.values())
    print(f"{len(damaged)} {what} records checked: {count} damaged")
    if count and not removed:
        print("clipflow verify --remove-damaged removes their records; the next workflow run writes them again")
    if count:
        sys.exit(1)


def _status(args) -> None:
    import time

    from clipflow.status import format_status, run_status

    status = run_status(args.results)
    print(json.dumps(status, indent=2) if args.json else format_status(status, time.time()))
    if status["failed_jobs"]:
        sys.exit(1)


def _demo_serve(args) -> None:
    from clipflow.demo import serve

    serve(args.folder, args.port, parent_pid=args.parent_pid)


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default, where it has one worth showing."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line, every subcommand and option (the docs check parses the docs' commands with it)."""
    from clipflow import __version__

    parser = argparse.ArgumentParser(prog="clipflow", description=__doc__, formatter_class=HelpWithDefaults)
    parser.add_argument("--version", action="version", version=f"clipflow {__version__}")
    with_defaults = functools.partial(argparse.ArgumentParser, formatter_class=HelpWithDefaults)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=with_defaults)

    plan = commands.add_parser("plan", help="ingest, deduplicate and plan shards (the workflow does this itself)")
    plan.add_argument("--config", default="config/config.yaml", help="the workflow's config file")
    plan.add_argument("--plan-dir", default="results/plan", help="where the plan is kept")
    plan.set_defaults(run=_plan)

    query = commands.add_parser("query", help="nearest neighbours of a text or an image")
    query.add_argument("text", nargs="?", help="a text query")
    query.add_argument("--image", help="an image file or http(s) URL to query with")
    query.add_argument("--index", default="results/index", help="the index folder the workflow wrote")
    query.add_argument("--modality", choices=["image", "text"], default="image", help="which embeddings to search")
    query.add_argument("-k", type=int, default=10, help="how many results")
    query.add_argument(
        "--format", choices=["jsonl", "table"], default="jsonl", help="one JSON object a line, or a table"
    )
    query.add_argument("--rerank-factor", type=int, default=RERANK_FACTOR, help=RERANK_HELP)
    query.set_defaults(run=_query)

    export = commands.add_parser("filter", help="export the samples matching a query: parquet and images")
    export.add_argument("text", nargs="?", help="a text query")
    export.add_argument("--image", help="an image file or http(s) URL to query with")
    export.add_argument("--index", default="results/index", help="the index folder the workflow wrote")
    export.add_argument("--shards", default="results/shards", help="the shards the images are read from")
    export.add_argument("--modality", choices=["image", "text"], default="image", help="which embeddings to search")
    export.add_argument("-k", type=int, help="at most this many matches")
    export.add_argument("--threshold", type=float, help="only matches with at least this similarity")
    export.add_argument("--output", required=True, help="folder for matches.parquet and images/")
    export.add_argument("--rerank-factor", type=int, default=RERANK_FACTOR, help=RERANK_HELP)
    export.set_defaults(run=_filter)

    serve = commands.add_parser("serve", help="clip-retrieval's back-end HTTP API and a search page")
    serve.add_argument(
        "--indices", default="indices.json", help='{"name": {"index": FOLDER, "shards": FOLDER}}, paths relative to it'
    )
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to answer other machines")
    serve.add_argument("--port", type=int, default=1234, help="the port to listen on")
    serve.add_argument(
        "--public-url",
        default="",
        help="the address clients reach this server at (behind a proxy: https://search.example.org), for results'"
        " shard_url (default: http://HOST:PORT as it listens, this machine's name for 0.0.0.0)",
    )
    serve.add_argument("--max-num-images", type=int, default=1000, help="largest num_images a query may ask")
    serve.add_argument("--max-result-ids", type=int, default=10000, help="largest num_result_ids a query may ask")
    serve.add_argument("--max-body-mb", type=int, default=10, help="largest request body (and fetched image)")
    serve.add_argument(
        "--body-timeout", type=float, default=30, help="seconds a request body may take to arrive (then 408)"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=15,
        help="seconds a connection may go without sending a whole request header, idle keep-alive connections "
        "too (then it is closed)",
    )
    serve.add_argument(
        "--allow-private-urls", action="store_true", help="let image_url reach private and loopback addresses"
    )
    serve.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="query encoders' precision: auto is fp16 on a GPU, fp32 on a CPU; bf16 is ~1.6x faster on CPUs with "
        "AVX512-BF16 (cosine to fp32 > 0.9999)",
    )
    serve.set_defaults(run=_serve)

    verify = commands.add_parser(
        "verify", help="check a folder of shards, embeddings or an index against their recorded sizes and sha256"
    )
    verify.add_argument(
        "folder",
        nargs="?",
        default="results/shards",
        help="a folder of shards, of embeddings, or an index folder (a local path or, for an index, a URL)",
    )
    verify.add_argument(
        "--remove-damaged",
        action="store_true",
        help="remove damaged shards (or the records of damaged embeddings or index files), so that the next run "
        "writes them again",
    )
    verify.set_defaults(run=_verify)

    status = commands.add_parser(
        "status", help="how far a run is: shards planned, downloaded, embedded, indexed; failures; time left"
    )
    status.add_argument("results", nargs="?", default="results", help="the run's results folder")
    status.add_argument("--json", action="store_true", help="the same as JSON")
    status.set_defaults(run=_status)

    demo = commands.add_parser("demo-serve", help="serve the demo images on 127.0.0.1 (started by the workflow)")
    demo.add_argument("--folder", required=True)
    demo.add_argument("--port", type=int, required=True)
    demo.add_argument("--parent-pid", type=int, default=os.getppid())
    demo.set_defaults(run=_demo_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Warnings (the random-weights one among them), and clipflow's own progress for the long-running plan and the
    # server; not the INFO lines open_clip and faiss's loader write while they load.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.command in ("plan", "serve"):
        logging.getLogger("clipflow").setLevel(logging.INFO)
    try:
        args.run(args)
    except ClipflowError as error:
        sys.exit(f"clipflow: error: {error}")


if __name__ == "__main__":
    main()
