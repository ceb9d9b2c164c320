"""Verify and repair in Dagster: an asset check per table (``matches_source``), the ``verify_replicas`` job that
runs them (on ``verify.schedule`` when set), and the ``repair_table`` job. Each calls the engine's
``replication/compare.py``, as ``rds-pipeline verify`` and ``repair`` do.

The check is separate from the sync (it reads every range of the source again, which a sync should not pay for);
it does not block, and it runs alone: from the asset's page, the job, or the schedule.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.tables import TableAsset
from rds_pipeline.dagster_defs.translator import POOL
from rds_pipeline.engine import interrupts
from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.frequency import parse_frequency
from rds_pipeline.engine.replication.compare import Verification, repair_table, verify_table

CHECK_SOURCE = "matches_source"
VERIFY_JOB = "verify_replicas"
REPAIR_JOB = "repair_table"


class VerifyConfig(dg.Config):
    sample: float = 1.0  # the fraction of each table's ranges compared, chosen at random


class RepairConfig(dg.Config):
    table: str  # schema.table, database.schema.table, or the destination table name


def _metadata(found: Verification) -> dict[str, Any]:
    return {
        "ranges": len(found.ranges),
        "ranges_checked": found.checked,
        "ranges_differing": len(found.differences),
        "differences": dg.MetadataValue.json([d.describe() for d in found.differences]),
        "seconds": round(found.seconds, 2),
    }


def build_verify_checks(assets: list[TableAsset]) -> list[dg.AssetChecksDefinition]:
    if not assets:
        return []
    by_key = {a.key: a for a in assets}
    specs = [
        dg.AssetCheckSpec(
            CHECK_SOURCE,
            asset=a.key,
            blocking=False,
            description="Each key range of the replica holds the source's rows (count and digest of every "
            "column); failing ranges are named, and `repair_table` re-copies them",
        )
        for a in assets
    ]

    @dg.multi_asset_check(specs=specs, can_subset=True, name="verify_replicas_checks", pool=POOL)
    def _verify(
        context: dg.AssetCheckExecutionContext,
        config: VerifyConfig,
        rds_source: RdsSourceResource,
        rds_destination: RdsDestinationResource,
    ) -> Iterator[dg.AssetCheckResult]:
        for check_key in sorted(context.selected_asset_check_keys, key=lambda k: k.asset_key.to_user_string()):
            asset = by_key[check_key.asset_key]
            interrupts.checkpoint()
            try:
                found = verify_table(rds_source.session(), rds_destination.get(), asset.table, sample=config.sample)
            except Exception as exc:  # noqa: BLE001 - one table's failure never stops another
                interrupts.checkpoint()
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                yield dg.AssetCheckResult(
                    passed=False,
                    asset_key=asset.key,
                    check_name=CHECK_SOURCE,
                    description=f"{asset.table.id}: could not verify: {message}",
                )
                continue
            yield dg.AssetCheckResult(
                passed=found.passed,
                asset_key=asset.key,
                check_name=CHECK_SOURCE,
                description=found.describe(),
                metadata=_metadata(found),
            )

    return [_verify]


def build_verify_jobs(
    assets: list[TableAsset], config: IntegrationConfig
) -> tuple[list[Any], list[dg.ScheduleDefinition]]:
    """``verify_replicas`` (every table's check; on ``verify.schedule``) and ``repair_table``."""
    if not assets:
        return [], []
    by_name: dict[str, TableAsset] = {}
    for asset in assets:
        relation = asset.table.relation
        for name in (asset.table.id, relation.qualified_name, asset.table.destination_table):
            by_name.setdefault(name, asset)
    checks = dg.AssetSelection.checks(*[dg.AssetCheckKey(a.key, CHECK_SOURCE) for a in assets])
    verify_job = dg.define_asset_job(
        VERIFY_JOB,
        selection=checks,
        description="Compare every replica with its source, range by range (config: sample).",
        config={"ops": {"verify_replicas_checks": {"config": {"sample": config.verify.sample}}}},
    )

    @dg.op(pool=POOL)
    def repair_ranges(
        context: dg.OpExecutionContext,
        config: RepairConfig,
        rds_source: RdsSourceResource,
        rds_destination: RdsDestinationResource,
    ) -> None:
        """Verify the table, re-copy only the ranges that differ (each in one transaction; no bookmark moves),
        verify again; the repair is recorded as an observation of the table."""
        asset = by_name.get(config.table)
        if asset is None:
            raise dg.Failure(
                f"{config.table} is not a selected table. Selected: {', '.join(sorted(a.table.id for a in assets))}",
                allow_retries=False,
            )
        session, destination = rds_source.session(), rds_destination.get()
        found = verify_table(session, destination, asset.table)
        context.log.info(found.describe())
        if found.passed:
            return
        done = repair_table(session, destination, asset.table, found)
        again = verify_table(session, destination, asset.table)
        context.log_event(
            dg.AssetObservation(
                asset_key=asset.key,
                metadata={
                    "repaired_ranges": dg.MetadataValue.json([r.describe() for r in done.repaired]),
                    "rows_recopied": done.rows_inserted,
                    "rows_replaced": done.rows_deleted,
                    "verified_after": again.passed,
                },
            )
        )
        if not again.passed:
            raise dg.Failure(again.describe(), allow_retries=False)
        context.log.info(f"{asset.table.id}: repaired {len(done.repaired)} range(s); it now matches the source")

    @dg.job(name=REPAIR_JOB, description="Re-copy only the ranges of one table that differ from the source.")
    def repair_job() -> None:
        repair_ranges()

    schedules = []
    if config.verify.schedule is not None:
        frequency = parse_frequency(config.verify.schedule, key="verify.schedule")
        schedules.append(
            dg.ScheduleDefinition(
                name="rds_verify_" + frequency.name.removeprefix("rds_sync_"),
                cron_schedule=frequency.cron,
                execution_timezone=frequency.timezone,
                job=verify_job,
                description=f"Verifies every replica {frequency.description} ({frequency.timezone}), "
                f"{config.verify.sample:.0%} of each table's ranges.",
            )
        )
    return [verify_job, repair_job], schedules
