"""Jobs: sync every table (what a schedule tick, a sensor and ``rds-pipeline sync`` run), sync a group, and
reset a table then bring its whole history back.

A tick covers tables of every partitioning, which no single asset run can (a run has one partitions
definition), so it is an op job; its ops call the same ``run_table`` as the assets and record the same
materializations and check results. ``pick_tables`` splits the tables into ``parallel`` buckets, and each
``sync_tables`` step takes a slot of the ``rds_source`` pool: a tick uses every slot the pool allows.
"""

from collections.abc import Iterator, Sequence

import dagster as dg

from rds_pipeline.dagster_defs.execute import (
    TableFailure,
    describe_failure,
    failure,
    log_run,
    run_table,
    stops_without_retry,
)
from rds_pipeline.dagster_defs.log_based import emit_stream, stream, stream_failures
from rds_pipeline.dagster_defs.materializations import TableEvents
from rds_pipeline.dagster_defs.partitions import integer_range_keys
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.tables import TableAsset
from rds_pipeline.dagster_defs.translator import POOL, RETRY_POLICY, dynamic_partitions_name
from rds_pipeline.engine import interrupts
from rds_pipeline.engine.replication.plan import Request
from rds_pipeline.engine.source.probe import probe_max_keys

SYNC_ALL = "sync_all"
PICK_OP = "pick_tables"
DEFAULT_PARALLEL = 2  # the default slots of the rds_source pool (dagster.yaml)


def tick_run_request(tables: list[TableAsset], run_key: str | None, reason: str) -> dg.RunRequest:
    """One run of sync_all over ``tables``: each of them catches up."""
    return dg.RunRequest(
        run_key=run_key,
        job_name=SYNC_ALL,
        run_config={"ops": {PICK_OP: {"config": {"tables": [a.table.id for a in tables]}}}},
        tags={"rds_pipeline/reason": reason, "rds_pipeline/tables": str(len(tables))},
    )


def add_key_ranges(instance: dg.DagsterInstance, dynamic: list[TableAsset], source: RdsSourceResource) -> int:
    """Add the key-range partitions integer-keyed tables need up to their current max(key)."""
    added = 0
    for asset in dynamic:
        conn = source.session().connection(asset.table.relation.database)
        probe = probe_max_keys(conn, [asset.table], {}).get(asset.table.id)
        if probe is None or probe.max_key is None:
            continue
        name = dynamic_partitions_name(asset.table)
        keys = integer_range_keys(
            list(instance.get_dynamic_partitions(name)), int(probe.max_key), asset.table.chunk_rows
        )
        if keys:
            instance.add_dynamic_partitions(name, keys)
            added += len(keys)
    return added


class PickConfig(dg.Config):
    group: str = ""  # empty: every group
    tables: list[str] = []  # empty: every table (of the group)
    parallel: int = DEFAULT_PARALLEL  # buckets run as separate steps, each in a slot of the rds_source pool


class ResetConfig(dg.Config):
    table: str  # schema.table, database.schema.table, or the destination table name


def buckets(chosen: list[TableAsset], parallel: int) -> list[list[TableAsset]]:
    """Split tables into at most ``parallel`` buckets of similar size (largest first, to the lightest)."""
    if not chosen:
        return []
    count = max(1, min(parallel, len(chosen)))
    loads = [0] * count
    split: list[list[TableAsset]] = [[] for _ in range(count)]
    for asset in sorted(chosen, key=lambda a: -(a.table.relation.row_estimate or 0)):
        lightest = loads.index(min(loads))
        split[lightest].append(asset)
        loads[lightest] += max(asset.table.relation.row_estimate or 0, 1000)
    return [sorted(b, key=lambda a: a.table.id) for b in split if b]


def sync_assets(
    context: dg.OpExecutionContext,
    chosen: list[TableAsset],
    request: Request,
    source: RdsSourceResource,
    destination: RdsDestinationResource,
    logged: Sequence[TableAsset] = (),
) -> None:
    """Sync each table in turn; a failure is reported with the table named and its fix, and the others go on.
    Log-based tables are read from their slot once (``logged``: all of them, since they share its position)."""
    failures: list[TableFailure] = []
    synced = 0
    if any(a.table.method == "log_based" for a in chosen):
        try:
            streamed = stream(list(logged), {}, source, destination, context.instance)
            list(emit_stream(context, streamed, set()))
            failures.extend(stream_failures(context, streamed))
            synced += len(streamed.runs)
        except Exception as exc:  # noqa: BLE001 - the slot's failure stops its tables, not the others
            interrupts.checkpoint()  # unless it was a stop request's doing
            for asset in logged:
                failures.append(describe_failure(asset, exc))
            context.log.error(f"FAILED {failures[-1].line()}")
        chosen = [a for a in chosen if a.table.method != "log_based"]
    dynamic = [a for a in chosen if a.plan.kind == "dynamic"]
    if dynamic:
        try:
            add_key_ranges(context.instance, dynamic, source)
        except Exception as exc:  # noqa: BLE001 - the tables' own syncs report the cause
            context.log.warning(f"could not add key ranges: {exc}")
    events = TableEvents(context)
    try:
        for asset in chosen:
            try:
                run = run_table(asset, request, source, destination, context.instance)
            except Exception as exc:  # noqa: BLE001 - one table's failure never stops another
                interrupts.checkpoint()  # unless it was a stop request's doing: then no other table starts
                failures.append(describe_failure(asset, exc))
                context.log.error(f"FAILED {failures[-1].line()}")
                continue
            for warning in run.result.report.warnings:
                context.log.warning(f"{asset.table.id}: {warning}")
            log_run(events, run)  # the counts and the plan are the materialization's metadata: no log line per table
            synced += 1
    finally:
        events.flush()  # what a stop or a failure left unwritten: the tables synced so far are recorded
    if synced:
        context.log.info(f"{synced} table(s) synced, {len(failures)} failed")
    if failures:
        raise failure(failures, synced)


def build_op_jobs(assets: list[TableAsset], pool: str = POOL, slot_pool: str = POOL) -> list[dg.JobDefinition]:
    """``pool``: the pool of the steps that copy tables (see ``pools.py``); ``slot_pool``: of the step that reads
    the log-based tables' slot (one run at a time per slot)."""
    by_id = {a.table.id: a for a in assets}
    logged = [a for a in assets if a.table.method == "log_based"]

    def find(name: str) -> TableAsset:
        for asset in assets:
            relation = asset.table.relation
            if name in (asset.table.id, relation.qualified_name, asset.table.destination_table):
                return asset
        raise dg.Failure(
            f"{name} is not a selected table. Selected: {', '.join(sorted(by_id))}", allow_retries=False
        )  # a retry would not make it one

    @dg.op(name=PICK_OP, out={"buckets": dg.DynamicOut(list), "log_based": dg.Out(list, is_required=False)})
    def pick_tables(config: PickConfig) -> Iterator[dg.DynamicOutput | dg.Output]:
        """The tables this run syncs (all, one group, or a list), in buckets for the pool's slots; the log-based
        ones apart, for the step that reads their slot."""
        chosen = [a for a in assets if not config.group or a.group == config.group]
        if config.group and not chosen:
            raise dg.Failure(f"no group {config.group!r}; groups: {', '.join(sorted({a.group for a in assets}))}")
        if config.tables:
            chosen = [find(name) for name in config.tables]
        streamed = sorted(a.table.id for a in chosen if a.table.method == "log_based")
        chosen = [a for a in chosen if a.table.method != "log_based"]
        for index, bucket in enumerate(buckets(chosen, config.parallel)):
            yield dg.DynamicOutput([a.table.id for a in bucket], output_name="buckets", mapping_key=f"bucket_{index}")
        if streamed:
            yield dg.Output(streamed, output_name="log_based")

    @dg.op(pool=pool, out=dg.Out(dg.Nothing), retry_policy=RETRY_POLICY)
    def sync_tables(
        context: dg.OpExecutionContext,
        table_ids: list,
        rds_source: RdsSourceResource,
        rds_destination: RdsDestinationResource,
    ) -> None:
        """Catch each table up (a table never synced, or whose destination table is gone: its history)."""
        with stops_without_retry():
            sync_assets(context, [by_id[t] for t in table_ids], Request.catch_up(), rds_source, rds_destination, logged)

    @dg.op(pool=slot_pool, out=dg.Out(dg.Nothing), retry_policy=RETRY_POLICY)
    def stream_tables(
        context: dg.OpExecutionContext,
        table_ids: list,
        rds_source: RdsSourceResource,
        rds_destination: RdsDestinationResource,
    ) -> None:
        """Read the slot once for every log-based table (a table without a snapshot gets one first)."""
        with stops_without_retry():
            sync_assets(context, [by_id[t] for t in table_ids], Request.catch_up(), rds_source, rds_destination, logged)

    @dg.op(pool=pool, out=dg.Out(dg.Nothing), retry_policy=RETRY_POLICY)
    def reset_and_resync(
        context: dg.OpExecutionContext,
        config: ResetConfig,
        rds_source: RdsSourceResource,
        rds_destination: RdsDestinationResource,
    ) -> None:
        """Clear the bookmark and data, then bring the whole history back (chunked along the partitions)."""
        asset = find(config.table)
        with stops_without_retry():
            rds_destination.get().reset(asset.table)
            context.log.info(f"{asset.table.id}: bookmark cleared and destination table dropped")
            sync_assets(context, [asset], Request.catch_up(), rds_source, rds_destination, logged)

    @dg.job(name=SYNC_ALL, description="Catch every selected table up (what a schedule tick does).")
    def sync_all() -> None:
        tables, streamed = pick_tables()
        tables.map(sync_tables)
        stream_tables(streamed)

    @dg.job(name="sync_group", description="Catch one group (source schema) up; config: group.")
    def sync_group() -> None:
        tables, streamed = pick_tables()
        tables.map(sync_tables)
        stream_tables(streamed)

    @dg.job(name="reset_table", description="Reset one table (bookmark and data), then bring its history back.")
    def reset_table() -> None:
        reset_and_resync()

    return [sync_all, sync_group, reset_table]
