"""Replication frequency: an interval, an anchor time, or a cron expression, turned into cron + timezone.

schedule: 30min | 1h | 6h | 12h | 24h                       # an interval
schedule: {every_hours: 6, anchor: "03:15", timezone: Europe/Paris}   # every N hours from HH:MM
schedule: {cron: "*/20 6-22 * * 1-5", timezone: UTC}        # advanced scheduling
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

from rds_pipeline.engine.errors import FrequencyError

INTERVALS = {"30min": 30, "1h": 60, "6h": 360, "12h": 720, "24h": 1440}
DEFAULT_SCHEDULE = "1h"
_FIELD = r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*"
_CRON = re.compile(rf"{_FIELD}(\s+{_FIELD}){{4}}")


@dataclass(frozen=True)
class Frequency:
    cron: str
    timezone: str
    description: str
    max_minutes_between_runs: int  # for freshness: the longest gap between two ticks

    @property
    def name(self) -> str:
        """A stable schedule name for this frequency."""
        slug = re.sub(r"[^0-9a-z]+", "_", f"{self.description} {self.timezone}".lower()).strip("_")
        return f"rds_sync_{slug}"


def parse_frequency(raw: Any, key: str = "schedule") -> Frequency:
    """Validate one schedule value; errors name ``key`` and give the accepted forms."""
    raw = DEFAULT_SCHEDULE if raw is None else raw
    forms = "an interval (30min, 1h, 6h, 12h, 24h), {every_hours: N, anchor: 'HH:MM', timezone: …} or {cron: '…'}"
    if isinstance(raw, str):
        raw = {"interval": raw}
    if not isinstance(raw, dict):
        raise FrequencyError(f"{key}: expected {forms}, got {raw!r}")
    timezone = str(raw.get("timezone", "UTC"))
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise FrequencyError(
            f"{key}.timezone: '{timezone}' is not an IANA time zone (e.g. UTC, Europe/Paris)"
        ) from None
    if "interval" in raw:
        interval = str(raw["interval"]).replace(" ", "").lower()
        if interval not in INTERVALS:
            raise FrequencyError(f"{key}: interval '{raw['interval']}' is not one of {', '.join(INTERVALS)}")
        minutes = INTERVALS[interval]
        by_minutes = {30: "*/30 * * * *", 60: "0 * * * *", 360: "0 */6 * * *", 720: "0 */12 * * *", 1440: "0 0 * * *"}
        return Frequency(by_minutes[minutes], timezone, f"every {interval}", minutes)
    if "every_hours" in raw:
        hours = raw["every_hours"]
        if not isinstance(hours, int) or not 1 <= hours <= 24:
            raise FrequencyError(f"{key}.every_hours: expected a whole number of hours from 1 to 24, got {hours!r}")
        anchor = str(raw.get("anchor", "00:00"))
        match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", anchor)
        if not match:
            raise FrequencyError(f"{key}.anchor: '{anchor}' is not a time of day HH:MM (24-hour)")
        hour, minute = int(match.group(1)), int(match.group(2))
        ticks = sorted({(hour + k * hours) % 24 for k in range(24 // hours or 1)})
        gap = max((b - a) % 24 or 24 for a, b in zip(ticks, ticks[1:] + ticks[:1], strict=True)) * 60
        return Frequency(f"{minute} {','.join(map(str, ticks))} * * *", timezone, f"every {hours}h from {anchor}", gap)
    if "cron" in raw:
        cron = str(raw["cron"]).strip()
        if not _CRON.fullmatch(cron):
            raise FrequencyError(f"{key}.cron: '{cron}' is not a valid cron expression")
        return Frequency(cron, timezone, f"cron {cron}", 24 * 60)
    raise FrequencyError(f"{key}: expected {forms}")
