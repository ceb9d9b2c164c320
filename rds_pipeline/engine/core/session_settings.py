"""The source and destination sessions' settings: canonical text output on both ends, so COPY text
round-trips exactly between servers."""

from __future__ import annotations

import psycopg2.extensions

SESSION_SETTINGS = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
}


def apply_session_settings(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        for name, value in SESSION_SETTINGS.items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
    conn.commit()
