"""The loading report printed after a sync: rows inserted, updated and deleted, duration and rate, per table."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def format_size(value: float | None) -> str:
    """Bytes for a person: ``n/a``, ``512 B``, ``3.1 MB`` (WAL lag, retained WAL, ...)."""
    if value is None:
        return "n/a"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def format_loading_report(rows: Iterable[dict[str, Any]]) -> str:
    """``rows`` are LoadingReport.as_dict() (optionally merged with the extraction log)."""
    rows = list(rows)
    header = ("table", "mode", "inserted", "updated", "deleted", "seconds", "rows/s")
    body = [
        (
            str(r["destination_table"]),
            str(r["mode"]),
            f"{r['rows_inserted']:,}",
            f"{r['rows_updated']:,}",
            f"{r['rows_deleted']:,}",
            f"{r['seconds']:.2f}",
            f"{r['rows_per_second']:,.0f}",
        )
        for r in rows
    ]
    totals = (
        f"TOTAL ({len(rows)} tables)",
        "",
        f"{sum(r['rows_inserted'] for r in rows):,}",
        f"{sum(r['rows_updated'] for r in rows):,}",
        f"{sum(r['rows_deleted'] for r in rows):,}",
        f"{sum(r['seconds'] for r in rows):.2f}",
        "",
    )
    table = [header, *body, totals]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for index, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [
            c.rjust(w) for c, w in zip(row[2:], widths[2:], strict=True)
        ]
        lines.append("  ".join(cells))
        if index == 0 or index == len(table) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_status(rows: Iterable[dict[str, Any]]) -> str:
    """``rds-pipeline status`` as a table (rows are TableStatus as dicts); each failure's error below it."""
    rows = list(rows)
    header = ("table", "method", "last sync (UTC)", "outcome", "bookmark / LSN", "rows", "lag", "next tick (UTC)")
    body = [
        (
            str(r["table"]),
            str(r["method"]).replace("_", "-"),
            (r["last_sync"] or "never")[:19].replace("T", " "),
            str(r["outcome"]),
            _short(r["position"] or ("-" if r["method"] == "full_table" else "none")),
            f"{r['rows_loaded']:,}" if r["rows_loaded"] is not None else "-",
            str(r["lag"]),
            (r["next_tick"] or "")[:16].replace("T", " "),
        )
        for r in rows
    ]
    table = [header, *body]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    automation = sorted({str(r["automation"]) for r in rows})
    if automation:
        lines.append("")
        lines.extend(f"ticks: {a}" for a in automation)
    for lost in sorted({str(r["slot_lost"]) for r in rows if r.get("slot_lost")}):
        lines.append(f"LOST {lost}")
    for r in rows:
        if r["error"]:
            lines.append(f"FAILED {r['table']}: {r['error']}")
    return "\n".join(lines)


def format_runs(runs: Iterable[dict[str, Any]]) -> str:
    """The runs part of ``rds-pipeline status`` (RunStanding as dicts): one line each, or nothing."""
    lines = []
    for r in runs:
        process = f" ({r['process']})" if r["process"] else ""
        since = f" since {r['since'][:19].replace('T', ' ')} UTC" if r["since"] and r["state"] == "waiting" else ""
        when = f" at {r['since'][:19].replace('T', ' ')}" if r["since"] and r["state"] == "cleaned" else ""
        lines.append(
            f"  run {r['run_id'][:8]}{process} {r['status']}, {r['state']}{since}{when}: {r['detail']}".rstrip(": ")
        )
    return "\n".join(["runs:", *lines]) if lines else ""


def _short(text: str, width: int = 32) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
