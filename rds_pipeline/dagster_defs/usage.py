"""The loading report: rows replicated per table per day, summed from the Dagster event log (Stitch's row usage)."""

import datetime as dt
from collections import defaultdict

import dagster as dg

from rds_pipeline.dagster_defs.tables import TableAsset


def row_usage(instance: dg.DagsterInstance, keys: list[dg.AssetKey], limit: int = 10_000) -> list[dict[str, object]]:
    """One row per (day, table): rows inserted, updated, deleted and syncs, from materialization events."""
    totals: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {"inserted": 0, "updated": 0, "deleted": 0, "syncs": 0}
    )
    for key in keys:
        result = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=limit)
        for record in result.records:
            materialization = record.asset_materialization
            if materialization is None or "rows_inserted" not in materialization.metadata:
                continue
            day = dt.datetime.fromtimestamp(record.timestamp, dt.UTC).date().isoformat()
            bucket = totals[(day, key.to_user_string())]
            for field, meta in (
                ("inserted", "rows_inserted"),
                ("updated", "rows_updated"),
                ("deleted", "rows_deleted"),
            ):
                value = materialization.metadata.get(meta)
                bucket[field] += int(value.value) if value is not None else 0  # type: ignore[arg-type]
            bucket["syncs"] += 1
    return [{"day": day, "table": table, **counts} for (day, table), counts in sorted(totals.items())]


def usage_markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| day | table | inserted | updated | deleted | syncs |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [
        f"| {r['day']} | {r['table']} | {r['inserted']:,} | {r['updated']:,} | {r['deleted']:,} | {r['syncs']} |"
        for r in rows
    ]
    return "\n".join(lines)


def build_usage_asset(assets: list[TableAsset]) -> dg.AssetsDefinition:
    keys = [a.key for a in assets]

    @dg.asset(
        name="rds_pipeline_loading_report",
        group_name="rds_pipeline_reports",
        kinds={"dagster"},
        description="Rows replicated per table per day, from the event log (row usage).",
    )
    def loading_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        rows = row_usage(context.instance, keys)
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.md(usage_markdown(rows)),
                "rows_replicated_total": sum(int(r["inserted"]) + int(r["updated"]) for r in rows),  # type: ignore[call-overload]
                "dagster/row_count": len(rows),
            }
        )

    return loading_report
