"""Load and validate ``rds_pipeline.yaml``: every error names the key and says how to fix it.

The file is found in the working directory, or at the path in ``RDS_PIPELINE_CONFIG``. ``${VAR}`` (or
``${VAR:-default}``) anywhere in a string value takes the value from the environment, which is how secrets
stay out of the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from rds_pipeline.engine.errors import ConfigError, FrequencyError
from rds_pipeline.engine.frequency import parse_frequency
from rds_pipeline.engine.naming import slot_name as default_slot_name
from rds_pipeline.engine.naming import snake_case
from rds_pipeline.engine.ownership import parse_owners, parse_tags
from rds_pipeline.engine.secrets import Secret

CONFIG_ENV_VAR = "RDS_PIPELINE_CONFIG"
DEFAULT_CONFIG_NAME = "rds_pipeline.yaml"
DEFAULT_CATALOG_NAME = "rds_pipeline_catalog.json"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DESTINATION_TYPES = ("postgres", "duckdb")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_BARE_ENV_REF = re.compile(r"(:[ \t]+)(\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\"'\n]*)?\})(?=[ \t]*(?:[,}\]]|#|$))", re.M)
_HOST_WITH_PORT = re.compile(r"^(?P<host>[^:\[\]/]+):(?P<port>\d+)$")
_REQUIRED = object()


@dataclass(frozen=True)
class SslConfig:
    mode: str = "prefer"
    root_cert: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class SshConfig:
    host: str
    user: str
    private_key: Path
    port: int = 22
    passphrase: Secret | None = None
    known_hosts: Path | None = None
    host_key_fingerprint: str | None = None
    trust_unknown_host_key: bool = False
    keepalive_seconds: int = 30
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class SourceConfig:
    host: str
    user: str
    password: Secret
    database: str
    port: int = 5432
    ssl: SslConfig = field(default_factory=SslConfig)
    ssh: SshConfig | None = None
    connect_timeout: int = 10
    statement_timeout_seconds: int = 900
    max_connections: int = 2
    stall_seconds: int = 300  # a COPY that moves no bytes this long is cancelled (and retried)
    # how many of one table's chunks its historical sync copies at once (each on its own connection); a Dagster
    # step then holds this many source connections, so the pool limit times this is the source's budget
    parallel_chunks: int = 1
    # auto: binary COPY where it is exact, except through an SSH tunnel (binary is ~25% more bytes, and a tunnel
    # or a slow link is paid per byte); text or binary force one (binary still only where exact)
    copy_format: str = "auto"


@dataclass(frozen=True)
class DestinationConfig:
    type: str
    host: str | None = None
    port: int = 5432
    user: str | None = None
    password: Secret | None = None
    database: str | None = None
    ssl: SslConfig = field(default_factory=SslConfig)
    path: Path | None = None
    connect_timeout: int = 10
    lock_timeout_seconds: int = 60  # a load waits this long for a lock on the destination, then retries


DELETE_MODES = ("hard", "soft")
AUTOMATIONS = ("schedules", "declarative")
DEFAULT_POOL_WAIT_SECONDS = 3600  # a run waits this long for a pool slot another live run holds, then fails


@dataclass(frozen=True)
class LogBasedConfig:
    """Options of log-based replication (``log_based:``); the slot and publication default to names derived
    from the integration."""

    slot: str | None = None
    publication: str | None = None
    deletes: str = "hard"  # hard: the row goes; soft: it stays, with _rds_deleted_at set
    heartbeat: bool = True  # emit a logical message each run, so an idle database's slot still advances
    lag_warn_mb: int = 1024  # retained WAL (MB) above which the slot check warns
    lag_fail_mb: int = 10240  # ... and fails
    lag_warn_minutes: int = 60  # time since the slot's last confirmed change above which the check warns
    lag_fail_minutes: int = 24 * 60
    takeover_after_seconds: int = 120  # a reader silent this long is gone: its walsender may be ended
    max_batch_changes: int = 50_000  # changes per destination transaction (memory stays bounded)
    on_slot_lost: str = "resnapshot"  # resnapshot: re-create the slot and copy its tables again; fail: stop
    slot_create_wait_seconds: int = 120  # creating a slot waits for running transactions (a standby: the primary)
    snapshot: str = "chunked"  # chunked: a big table chunk by chunk between stream catch-ups; exported: one snapshot


@dataclass(frozen=True)
class VerifyConfig:
    """``verify:``: when the replicas are compared with the source (``replication/compare.py``) on their own."""

    schedule: Any = None  # None: only when asked (the UI's check, `rds-pipeline verify`); else a frequency
    sample: float = 1.0  # the fraction of each table's ranges compared, chosen at random each time


SLOT_LOST_MODES = ("resnapshot", "fail")
SNAPSHOT_MODES = ("chunked", "exported")


@dataclass(frozen=True)
class IntegrationConfig:
    integration_name: str
    source: SourceConfig
    destination: DestinationConfig
    tables: list[dict[str, Any]] = field(default_factory=list)
    path: Path | None = None
    catalog_path: Path = Path(DEFAULT_CATALOG_NAME)
    allow_integration_rename: bool = False
    schedule: Any = None  # raw; parsed by engine.frequency.parse_frequency
    log_based: LogBasedConfig = field(default_factory=LogBasedConfig)
    owners: tuple[str, ...] = ()  # every replica's owners (a table's own `owners:` replaces them)
    tags: dict[str, str] = field(default_factory=dict)  # every replica's tags (a table's own `tags:` add to them)
    automation: str = "schedules"  # schedules: one run per tick for its tables; declarative: automation conditions
    pool_wait_seconds: int = DEFAULT_POOL_WAIT_SECONDS  # the longest wait for a pool slot (a live run holds it)
    verify: VerifyConfig = field(default_factory=VerifyConfig)

    @property
    def source_key(self) -> str:
        """Identifies the source across renames of the integration."""
        return f"{self.source.host}:{self.source.port}/{self.source.database}"

    def selected_ids(self) -> set[str]:
        """``database.schema.name`` of each entry in ``tables:`` (as written; names holding dots need the
        mapping form). For the integration registry, which must tell a second integration from a rename."""
        ids = set()
        for entry in self.tables:
            if isinstance(entry, dict) and entry.get("table"):
                ids.add(
                    f"{entry.get('database') or self.source.database}.{entry.get('schema') or 'public'}."
                    f"{entry['table']}"
                )
                continue
            name = str(entry.get("name") if isinstance(entry, dict) else entry)
            parts = name.split(".")
            ids.add(
                name if len(parts) >= 3 else f"{self.source.database}.{name if len(parts) == 2 else 'public.' + name}"
            )
        return ids

    @property
    def destination_schema(self) -> str:

        return snake_case(self.integration_name)

    @property
    def slot_name(self) -> str:
        return self.log_based.slot or default_slot_name(self.destination_schema)

    @property
    def publication_name(self) -> str:
        return self.log_based.publication or self.slot_name

    def secrets(self) -> list[Secret]:
        """Every secret value in the config, for redaction of messages from other libraries."""
        found = [self.source.password]
        if self.source.ssh and self.source.ssh.passphrase:
            found.append(self.source.ssh.passphrase)
        if self.destination.password:
            found.append(self.destination.password)
        return found


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config to use: an explicit path, else ``$RDS_PIPELINE_CONFIG``, else ``./rds_pipeline.yaml``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(CONFIG_ENV_VAR):
        return Path(os.environ[CONFIG_ENV_VAR]).expanduser()
    return Path.cwd() / DEFAULT_CONFIG_NAME


def load_config(path: str | os.PathLike[str] | None = None) -> IntegrationConfig:
    """Read, expand and validate the config; raise ``ConfigError`` listing every problem found."""
    config_path = find_config_path(path)
    if not config_path.is_file():
        raise ConfigError(
            [
                f"config file {config_path} not found. Fix: create it (see README.md, 'Configuration'), "
                f"run from the folder that holds it, or set {CONFIG_ENV_VAR}=/path/to/rds_pipeline.yaml"
            ]
        )
    try:
        data = YAML(typ="safe").load(quote_env_refs(config_path.read_text(encoding="utf-8")))
    except YAMLError as exc:
        raise ConfigError([f"the file is not valid YAML: {exc}"], config_path) from None
    return parse_config(data, base_dir=config_path.parent, path=config_path)


def quote_env_refs(text: str) -> str:
    """Quote a value that is just ``${VAR}``: YAML reads an unquoted ``{`` as a mapping, so the documented
    ``{..., passphrase: ${SSH_PASSPHRASE}, ...}`` would not even parse. Expansion happens after parsing, so a
    secret's own characters can never change the YAML structure."""
    return _BARE_ENV_REF.sub(lambda m: f'{m.group(1)}"{m.group(2)}"', text)


def parse_config(
    data: Any, base_dir: Path | None = None, path: Path | None = None, environ: dict[str, str] | None = None
) -> IntegrationConfig:
    """Validate an already-parsed mapping (used by ``load_config`` and by tests)."""
    reader = _Reader(environ if environ is not None else dict(os.environ), base_dir or Path.cwd())
    config = reader.integration(data)
    if reader.problems:
        raise ConfigError(reader.problems, path)
    assert config is not None
    return config if path is None else _with_path(config, path)


def _with_path(config: IntegrationConfig, path: Path) -> IntegrationConfig:
    return dataclasses.replace(config, path=path)


class _Reader:
    """Walks the raw mapping, collecting every problem rather than stopping at the first."""

    def __init__(self, environ: dict[str, str], base_dir: Path) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    # -- scalars -------------------------------------------------------------------------------------------
    def expand(self, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            self.problem(
                key,
                f"environment variable {name} is not set. Fix: export {name}=... before running, "
                f"or write ${{{name}:-default}} to give a default",
            )
            return ""

        return _ENV_REF.sub(substitute, value)

    def mapping(self, key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.problem(key or "(top level)", f"expected a mapping of keys, got {_kind(value)}")
            return None
        for name in value:
            if name not in allowed:
                close = difflib.get_close_matches(str(name), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(allowed)}"
                self.problem(_join(key, str(name)), f"unknown key. Fix: remove it or rename it; {hint}")
        return value

    def string(self, parent: str, data: dict[str, Any], name: str, default: Any = _REQUIRED) -> Any:
        key = _join(parent, name)
        value = data.get(name)
        if value is None:
            if default is _REQUIRED:
                self.problem(key, "is required. Fix: add it (see README.md, 'Configuration')")
                return ""
            return default
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.problem(key, f"expected a string, got {_kind(value)}")
            return ""
        value = self.expand(key, value).strip()
        if not value and default is _REQUIRED:
            self.problem(key, "is empty. Fix: give it a value")
        return value

    def secret(self, parent: str, data: dict[str, Any], name: str, required: bool) -> Secret | None:
        key = _join(parent, name)
        raw = data.get(name)
        if raw is None:
            if required:
                self.problem(key, f"is required. Fix: add `{name}: ${{ENV_VAR}}` and export ENV_VAR")
            return None
        if not isinstance(raw, (str, int)) or isinstance(raw, bool):
            self.problem(key, f"expected a string, got a {type(raw).__name__} (value not shown)")
            return None
        return Secret(self.expand(key, str(raw)))

    def integer(self, parent: str, data: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
        key = _join(parent, name)
        value = self.expand(key, data.get(name, default))
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"expected a whole number, got {value!r}. Fix: write e.g. `{name}: {default}`")
            return default
        if not low <= value <= high:
            self.problem(key, f"{value} is out of range. Fix: use a value from {low} to {high}")
            return default
        return value

    def choice(self, parent: str, data: dict[str, Any], name: str, default: str, allowed: tuple[str, ...]) -> str:
        value: str = self.string(parent, data, name, default=default)
        if value not in allowed:
            self.problem(
                _join(parent, name),
                f"{value!r} is not one of {', '.join(allowed)}. Fix: write e.g. `{name}: {default}`",
            )
            return default
        return value

    def boolean(self, parent: str, data: dict[str, Any], name: str, default: bool) -> bool:
        value = self.expand(_join(parent, name), data.get(name, default))
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            value = value.lower() in ("true", "yes")
        if not isinstance(value, bool):
            self.problem(_join(parent, name), f"expected true or false, got {value!r}")
            return default
        return value

    def file_path(self, parent: str, data: dict[str, Any], name: str, must_exist: bool = True) -> Path | None:
        value = self.string(parent, data, name, default=None)
        if not value:
            return None
        resolved = Path(value).expanduser()
        if not resolved.is_absolute():
            resolved = (self.base_dir / resolved).resolve()
        if must_exist and not resolved.exists():
            self.problem(
                _join(parent, name),
                f"file {resolved} does not exist. Fix: correct the path (relative paths are read from "
                f"the config file's folder)",
            )
        return resolved

    def host(self, parent: str, data: dict[str, Any]) -> str:
        key = _join(parent, "host")
        host: str = self.string(parent, data, "host")
        if "://" in host:
            self.problem(key, f"'{host}' looks like a URL. Fix: give only the host name, without a scheme")
            return host
        match = _HOST_WITH_PORT.match(host)
        if match:
            self.problem(
                key,
                f"'{host}' includes a port. Fix: remove ':{match.group('port')}' from the host and put it in "
                f"`{_join(parent, 'port')}: {match.group('port')}`",
            )
        return host

    # -- sections ------------------------------------------------------------------------------------------
    def integration(self, data: Any) -> IntegrationConfig | None:
        if data is None:
            self.problem("(top level)", "the config file is empty. Fix: see README.md, 'Configuration'")
            return None
        top = self.mapping(
            "",
            data,
            (
                "integration_name",
                "source",
                "destination",
                "tables",
                "catalog",
                "allow_integration_rename",
                "schedule",
                "log_based",
                "owners",
                "tags",
                "automation",
                "pool_wait_seconds",
                "verify",
            ),
        )
        if top is None:
            return None
        name = self.string("", top, "integration_name")
        if name and not re.search(r"[A-Za-z0-9]", name):
            self.problem("integration_name", f"'{name}' has no letters or digits. Fix: give a readable name")
        source = self.source(top.get("source"))
        destination = self.destination(top.get("destination"))
        tables = top.get("tables") or []
        if not isinstance(tables, list):
            self.problem("tables", f"expected a list of tables, got {_kind(tables)}")
            tables = []
        catalog = self.file_path("", top, "catalog", must_exist=False) or self.base_dir / DEFAULT_CATALOG_NAME
        if source is None or destination is None:
            return None
        allow_rename = self.boolean("", top, "allow_integration_rename", False)
        schedule = top.get("schedule")

        try:
            parse_frequency(schedule)
        except FrequencyError as exc:
            self.problems.append(f"{exc}. Fix: see README.md, 'Schedules'")
        return IntegrationConfig(
            name,
            source,
            destination,
            list(tables),
            catalog_path=catalog,
            allow_integration_rename=allow_rename,
            schedule=schedule,
            log_based=self.log_based(top.get("log_based")),
            owners=parse_owners(top.get("owners"), "owners", self.problems) or (),
            tags=parse_tags(top.get("tags"), "tags", self.problems),
            automation=self.choice("", top, "automation", "schedules", AUTOMATIONS),
            pool_wait_seconds=self.integer("", top, "pool_wait_seconds", DEFAULT_POOL_WAIT_SECONDS, 1, 7 * 24 * 3600),
            verify=self.verify(top.get("verify")),
        )

    def verify(self, raw: Any) -> VerifyConfig:
        if raw is None:
            return VerifyConfig()
        if not isinstance(raw, dict):
            self.problem("verify", f"expected a mapping (schedule:, sample:), got {_kind(raw)}")
            return VerifyConfig()
        for key in raw:
            if key not in ("schedule", "sample"):
                self.problem(f"verify.{key}", "unknown key. Fix: remove it; allowed: schedule, sample")
        schedule = raw.get("schedule")
        if schedule is not None:
            try:
                parse_frequency(schedule, key="verify.schedule")
            except FrequencyError as exc:
                self.problems.append(f"{exc}. Fix: see README.md, 'Schedules'")
        sample = raw.get("sample", 1.0)
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0 < sample <= 1:
            self.problem("verify.sample", f"expected a fraction in (0, 1] of each table's ranges, got {sample!r}")
            sample = 1.0
        return VerifyConfig(schedule, float(sample))

    def log_based(self, raw: Any) -> LogBasedConfig:
        if raw is None:
            return LogBasedConfig()
        allowed = tuple(f.name for f in dataclasses.fields(LogBasedConfig))
        data = self.mapping("log_based", raw, allowed)
        if data is None:
            return LogBasedConfig()
        defaults = LogBasedConfig()
        slot = self.string("log_based", data, "slot", default=None)
        if slot and not re.fullmatch(r"[a-z0-9_]{1,63}", slot):
            self.problem(
                "log_based.slot",
                f"'{slot}' is not a slot name. Fix: use lower-case letters, digits and "
                "underscores, at most 63 characters",
            )
        deletes = self.string("log_based", data, "deletes", default="hard")
        if deletes not in DELETE_MODES:
            self.problem(
                "log_based.deletes",
                f"'{deletes}' is not a mode. Fix: use hard (rows are deleted) or soft "
                "(rows stay, with _rds_deleted_at set)",
            )
        lost = self.choice("log_based", data, "on_slot_lost", "resnapshot", SLOT_LOST_MODES)
        snapshot = self.choice("log_based", data, "snapshot", "chunked", SNAPSHOT_MODES)
        numbers = {
            name: self.integer("log_based", data, name, getattr(defaults, name), 1, 10**9)
            for name in (
                "lag_warn_mb",
                "lag_fail_mb",
                "lag_warn_minutes",
                "lag_fail_minutes",
                "takeover_after_seconds",
                "max_batch_changes",
                "slot_create_wait_seconds",
            )
        }
        for warn, fail in (("lag_warn_mb", "lag_fail_mb"), ("lag_warn_minutes", "lag_fail_minutes")):
            if numbers[warn] > numbers[fail]:
                self.problem(
                    f"log_based.{warn}",
                    f"{numbers[warn]} is above {fail} ({numbers[fail]}). Fix: warn "
                    "at a lower value than the one that fails",
                )
        return LogBasedConfig(
            slot=slot or None,
            publication=self.string("log_based", data, "publication", default=None),
            deletes=deletes,
            heartbeat=self.boolean("log_based", data, "heartbeat", True),
            on_slot_lost=lost,
            snapshot=snapshot,
            **numbers,
        )

    def ssl(self, parent: str, raw: Any) -> SslConfig:
        key = _join(parent, "ssl")
        if raw is None:
            return SslConfig()
        if isinstance(raw, str):
            raw = {"mode": raw}
        data = self.mapping(key, raw, ("mode", "root_cert", "client_cert", "client_key"))
        if data is None:
            return SslConfig()
        mode = self.string(key, data, "mode", default="prefer")
        if mode not in SSL_MODES:
            self.problem(_join(key, "mode"), f"'{mode}' is not an SSL mode. Fix: use one of {', '.join(SSL_MODES)}")
        root_cert = self.file_path(key, data, "root_cert")
        client_cert = self.file_path(key, data, "client_cert")
        client_key = self.file_path(key, data, "client_key")
        if mode in ("verify-ca", "verify-full") and root_cert is None:
            self.problem(
                _join(key, "root_cert"),
                f"mode {mode} needs the CA bundle. Fix: download the RDS bundle from "
                "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem and set root_cert to its path",
            )
        if (client_cert is None) != (client_key is None):
            self.problem(key, "client_cert and client_key go together. Fix: set both or neither")
        return SslConfig(mode, root_cert, client_cert, client_key)

    def ssh(self, parent: str, raw: Any) -> SshConfig | None:
        key = _join(parent, "ssh")
        if raw is None:
            return None
        allowed = (
            "host",
            "port",
            "user",
            "private_key",
            "passphrase",
            "known_hosts",
            "host_key_fingerprint",
            "trust_unknown_host_key",
            "keepalive_seconds",
            "connect_timeout",
        )
        data = self.mapping(key, raw, allowed)
        if data is None:
            return None
        host = self.host(key, data)
        port = self.integer(key, data, "port", 22, 1, 65535)
        user = self.string(key, data, "user")
        private_key = self.file_path(key, data, "private_key")
        if "private_key" not in data:
            self.problem(_join(key, "private_key"), "is required. Fix: give the path of the bastion's key file")
        passphrase = self.secret(key, data, "passphrase", required=False)
        fingerprint = self.string(key, data, "host_key_fingerprint", default=None)
        if fingerprint and not fingerprint.startswith("SHA256:"):
            self.problem(
                _join(key, "host_key_fingerprint"),
                f"'{fingerprint}' is not a SHA256 fingerprint. Fix: copy the 'SHA256:…' value printed by "
                f"`ssh-keygen -lf <(ssh-keyscan -p {port} {host})`",
            )
        known_hosts = self.file_path(key, data, "known_hosts", must_exist=False)
        if known_hosts is None:
            known_hosts = Path("~/.ssh/known_hosts").expanduser()
        return SshConfig(
            host=host,
            user=user,
            private_key=private_key or Path(),
            port=port,
            passphrase=passphrase if passphrase else None,
            known_hosts=known_hosts,
            host_key_fingerprint=fingerprint or None,
            trust_unknown_host_key=self.boolean(key, data, "trust_unknown_host_key", False),
            keepalive_seconds=self.integer(key, data, "keepalive_seconds", 30, 0, 3600),
            connect_timeout=self.integer(key, data, "connect_timeout", 10, 1, 300),
        )

    def source(self, raw: Any) -> SourceConfig | None:
        allowed = (
            "host",
            "port",
            "user",
            "password",
            "database",
            "ssl",
            "ssh",
            "connect_timeout",
            "statement_timeout_seconds",
            "max_connections",
            "stall_seconds",
            "parallel_chunks",
            "copy_format",
        )
        if raw is None:
            self.problem(
                "source", "is required. Fix: add a `source:` section with host, port, user, password, database"
            )
            return None
        data = self.mapping("source", raw, allowed)
        if data is None:
            return None
        return SourceConfig(
            host=self.host("source", data),
            user=self.string("source", data, "user"),
            password=self.secret("source", data, "password", required=True) or Secret(""),
            database=self.string("source", data, "database"),
            port=self.integer("source", data, "port", 5432, 1, 65535),
            ssl=self.ssl("source", data.get("ssl")),
            ssh=self.ssh("source", data.get("ssh")),
            connect_timeout=self.integer("source", data, "connect_timeout", 10, 1, 300),
            statement_timeout_seconds=self.integer("source", data, "statement_timeout_seconds", 900, 0, 86400 * 7),
            max_connections=(most := self.integer("source", data, "max_connections", 2, 1, 64)),
            stall_seconds=self.integer("source", data, "stall_seconds", 300, 5, 86400),
            # never more connections than the cap allows
            parallel_chunks=self.integer("source", data, "parallel_chunks", 1, 1, most),
            copy_format=self.choice("source", data, "copy_format", "auto", ("auto", "text", "binary")),
        )

    def destination(self, raw: Any) -> DestinationConfig | None:
        allowed = (
            "type",
            "host",
            "port",
            "user",
            "password",
            "database",
            "ssl",
            "path",
            "connect_timeout",
            "lock_timeout_seconds",
        )
        if raw is None:
            self.problem(
                "destination",
                "is required. Fix: add `destination: {type: duckdb, path: replica.duckdb}` or a postgres one",
            )
            return None
        data = self.mapping("destination", raw, allowed)
        if data is None:
            return None
        kind = self.string("destination", data, "type")
        if kind not in DESTINATION_TYPES:
            self.problem(
                "destination.type", f"'{kind}' is not supported. Fix: use one of {', '.join(DESTINATION_TYPES)}"
            )
            return None
        if kind == "duckdb":
            for name in ("host", "user", "password", "database"):
                if name in data:
                    self.problem(f"destination.{name}", "does not apply to a duckdb destination. Fix: remove it")
            path = self.file_path("destination", data, "path", must_exist=False)
            if path is None:
                self.problem("destination.path", "is required for duckdb. Fix: add e.g. `path: replica.duckdb`")
            return DestinationConfig(type=kind, path=path)
        if "path" in data:
            self.problem("destination.path", "applies only to duckdb. Fix: remove it")
        return DestinationConfig(
            type=kind,
            host=self.host("destination", data),
            port=self.integer("destination", data, "port", 5432, 1, 65535),
            user=self.string("destination", data, "user"),
            password=self.secret("destination", data, "password", required=True),
            database=self.string("destination", data, "database"),
            ssl=self.ssl("destination", data.get("ssl")),
            connect_timeout=self.integer("destination", data, "connect_timeout", 10, 1, 300),
            lock_timeout_seconds=self.integer("destination", data, "lock_timeout_seconds", 60, 1, 3600),
        )


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"
