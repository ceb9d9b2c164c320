"""Verify and repair in Dagster, on a real instance and a DuckDB replica: the `matches_source` check passes after a
sync, fails naming the ranges once the replica is edited by hand, `repair_table` re-copies those and records it,
and the next `verify_replicas` run passes. With `verify: {schedule:}` the job gets its schedule."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from rds_pipeline.dagster_defs.verify import CHECK_SOURCE, REPAIR_JOB, VERIFY_JOB
from rds_pipeline.engine.destinations.duckdb import run
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import key, make_project

DDL = (
    "CREATE TABLE people (id uuid PRIMARY KEY, name text, score float8);"
    "INSERT INTO people SELECT md5(g::text)::uuid, 'p' || g, g / 3.0 FROM generate_series(1, 3000) g; ANALYZE people"
)


def test_the_check_fails_naming_ranges_and_the_repair_job_fixes_them(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    project = make_project(pg18, tmp_path, [{"name": "public.people"}], ddl=DDL, verify={"schedule": "24h"})
    defs = project.defs()
    assert defs.resolve_job_def("sync_all").execute_in_process(instance=instance).success

    def verify() -> dg.AssetCheckEvaluation:
        result = defs.resolve_job_def(VERIFY_JOB).execute_in_process(instance=instance, raise_on_error=False)
        [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHECK_SOURCE]
        return evaluation

    clean = verify()
    assert clean.passed and clean.asset_key == key("people") and clean.metadata["ranges"].value > 10

    destination = project.destination()
    table = project.table("public.people")
    run(destination.conn, f"UPDATE {destination.target(table)} SET name = 'edited' WHERE name = 'p42'")
    destination.close()
    damaged = verify()
    assert not damaged.passed and damaged.metadata["ranges_differing"].value == 1
    assert "differ from the source" in damaged.description and "rds-pipeline repair" in damaged.description
    assert "different values" in damaged.metadata["differences"].value[0]

    repair = defs.resolve_job_def(REPAIR_JOB).execute_in_process(
        instance=instance, run_config={"ops": {"repair_ranges": {"config": {"table": "public.people"}}}}
    )
    assert repair.success
    [observation] = [
        e.event_specific_data.asset_observation  # type: ignore[union-attr]
        for e in repair.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observation.asset_key == key("people") and len(observation.metadata["repaired_ranges"].value) == 1
    assert observation.metadata["verified_after"].value is True
    assert verify().passed

    [schedule] = [s for s in defs.schedules if s.name.startswith("rds_verify_")]
    assert schedule.job_name == VERIFY_JOB and schedule.cron_schedule == "0 0 * * *"

    with pytest.raises(dg.Failure, match="is not a selected table"):
        defs.resolve_job_def(REPAIR_JOB).execute_in_process(
            instance=instance, run_config={"ops": {"repair_ranges": {"config": {"table": "public.nope"}}}}
        )
