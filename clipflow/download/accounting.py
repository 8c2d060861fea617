"""Account for every input row: dropped as duplicate, invalid, filtered out before download (by the filter that
removed it), not fetched (a URL of a verbatim plan that is not fetched, by its problem), downloaded, or failed
with a reason."""

import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from clipflow.bulk import Cache
from clipflow.errors import ClipflowError
from clipflow.ingest.planner import Plan
from clipflow.shards import FILTERED, NOT_FETCHED

# img2dataset's resizer's own reasons, then clipflow.download.images' (each message starts with its reason)
RESIZE_REASONS = ("image too small", "image area too large", "aspect ratio too large")
RESIZE_REASONS += ("truncated image", "damaged image", "not an image", "empty body")
# clipflow.download.http's errors: reason by how the message starts (None: the message up to its colon)
DOWNLOAD_REASONS = {
    "download took longer": "deadline exceeded",
    "connection closed": "body shorter than its Content-Length",
    "unsupported": None,
    "body in Content-Encoding": None,
}


def failure_reason(status: str, message: str | None) -> str:
    """A short, groupable reason for one failed row of an img2dataset shard parquet."""
    message = message or ""
    if status == "failed_to_resize":
        if message.startswith(RESIZE_REASONS):
            return message.split(":")[0]
        return "not a decodable image"
    for start, reason in DOWNLOAD_REASONS.items():
        if message.startswith(start):
            return reason or message.split(":")[0]
    http = re.match(r"HTTP Error (\d+)", message)
    if http:
        return f"http {http.group(1)}"
    if "X-Robots-Tag" in message:
        return "disallowed by X-Robots-Tag"
    if "timed out" in message:
        return "timeout"
    if "unknown url type" in message or "no host given" in message:
        return "invalid url"
    if "urlopen error" in message or "Connection" in message:
        return "connection error"
    return "download error"


def shard_accounting(plan: Plan, shard: str, result_parquet: Path) -> dict:
    planned = pq.ParquetFile(plan.shard_path(shard)).metadata.num_rows
    results = pq.read_table(result_parquet, columns=["status", "error_message"]).to_pylist()
    if len(results) != planned:
        raise ClipflowError(f"{result_parquet}: {len(results)} rows for {planned} planned; download the shard again")
    filtered = Counter(r["error_message"].removeprefix("filtered out by ") for r in results if r["status"] == FILTERED)
    not_fetched = Counter(r["error_message"] for r in results if r["status"] == NOT_FETCHED)
    failed = Counter(
        failure_reason(r["status"], r["error_message"])
        for r in results
        if r["status"] not in ("success", FILTERED, NOT_FETCHED)
    )
    return {
        "shard": shard,
        "planned": planned,
        "filtered_out": dict(sorted(filtered.items())),
        "not_fetched": dict(sorted(not_fetched.items())),
        "downloaded": planned - sum(failed.values()) - sum(filtered.values()) - sum(not_fetched.values()),
        "failed": dict(sorted(failed.items())),
    }


def summarize(plan: Plan, result_parquets: list[Path | str], cache: Cache | None = None) -> dict:
    """Accounting over the plan and img2dataset's per-shard parquets (one per planned shard, named after it; those
    on bulk storage read through `cache`)."""
    by_shard = {Path(path).stem: Path(path) for path in result_parquets}
    missing = sorted(set(plan.shards) - set(by_shard))
    if missing:
        raise ClipflowError(f"no downloaded parquet for planned shards {missing[:10]}")
    local = cache.local if cache else Path
    shards = [shard_accounting(plan, shard, local(by_shard[shard])) for shard in plan.shards]
    totals = plan.totals()
    failed, filtered, not_fetched = Counter(), Counter(), Counter()
    for shard in shards:
        failed.update(shard["failed"])
        filtered.update(shard["filtered_out"])
        not_fetched.update(shard["not_fetched"])
    summary = {
        "input_rows": totals["rows"],
        "duplicates_dropped": totals["duplicates"],
        "invalid_dropped": totals["invalid"],
        "filtered_out": dict(sorted(filtered.items())),
        "not_fetched": dict(sorted(not_fetched.items())),
        "downloaded": sum(shard["downloaded"] for shard in shards),
        "failed": dict(sorted(failed.items())),
        "shards": shards,
    }
    accounted = summary["duplicates_dropped"] + summary["invalid_dropped"] + summary["downloaded"]
    accounted += sum(failed.values()) + sum(filtered.values()) + sum(not_fetched.values())
    if accounted != summary["input_rows"]:
        raise ClipflowError(
            f"accounting does not add up: {accounted} rows accounted for {summary['input_rows']} input rows"
        )
    return summary


def format_summary(summary: dict) -> str:
    lines = [
        f"input rows                      {summary['input_rows']:>10,}",
        f"  duplicates dropped            {summary['duplicates_dropped']:>10,}",
        f"  invalid dropped               {summary['invalid_dropped']:>10,}",
    ]
    if summary["filtered_out"]:
        lines.append(f"  filtered out (download.subset){sum(summary['filtered_out'].values()):>10,}")
        lines += [f"    by {name:<25}{count:>10,}" for name, count in summary["filtered_out"].items()]
    if summary["not_fetched"]:
        lines.append(f"  URL not fetched (verbatim)    {sum(summary['not_fetched'].values()):>10,}")
        lines += [f"    {reason[:28]:<28}{count:>10,}" for reason, count in summary["not_fetched"].items()]
    lines += [
        f"  downloaded                    {summary['downloaded']:>10,}",
        f"  failed                        {sum(summary['failed'].values()):>10,}",
    ]
    lines += [f"    {reason:<28}{count:>10,}" for reason, count in summary["failed"].items()]
    lines.append(f"shards                          {len(summary['shards']):>10,}")
    return "\n".join(lines)


def plot_summary(summary: dict, path: Path | str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    states = {
        "downloaded": summary["downloaded"],
        "duplicate": summary["duplicates_dropped"],
        "invalid": summary["invalid_dropped"],
        **{f"filtered out by {name}": count for name, count in summary["filtered_out"].items()},
        **{f"not fetched: {reason}": count for reason, count in summary["not_fetched"].items()},
        **{f"failed: {reason}": count for reason, count in summary["failed"].items()},
    }
    shards = summary["shards"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    left.barh(
        list(states),
        list(states.values()),
        color=["tab:green", "tab:gray", "tab:brown"]
        + ["tab:olive"] * len(summary["filtered_out"])
        + ["tab:brown"] * len(summary["not_fetched"])
        + ["tab:red"] * len(summary["failed"]),
    )
    left.bar_label(left.containers[0], fmt="{:,.0f}", padding=3)
    left.invert_yaxis()
    left.set_title(f"{summary['input_rows']:,} input rows")
    left.set_xlabel("rows")
    positions = range(len(shards))
    right.bar(positions, [s["downloaded"] for s in shards], label="downloaded", color="tab:green")
    stacked = [s["downloaded"] for s in shards]
    parts = [("filtered_out", name, f"filtered out by {name}") for name in summary["filtered_out"]]
    parts += [("not_fetched", reason, f"not fetched: {reason}") for reason in summary["not_fetched"]]
    parts += [("failed", reason, f"failed: {reason}") for reason in summary["failed"]]
    for state, name, label in parts:
        counts = [s[state].get(name, 0) for s in shards]
        right.bar(positions, counts, bottom=stacked, label=label)
        stacked = [a + b for a, b in zip(stacked, counts)]
    if len(shards) <= 40:
        right.set_xticks(list(positions), [s["shard"] for s in shards], rotation=90, fontsize="small")
    else:
        right.xaxis.get_major_locator().set_params(integer=True)
    right.set_title("per shard")
    right.set_xlabel("shard")
    right.set_ylabel("planned rows")
    right.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
