from __future__ import annotations

from pathlib import Path

import pytest

from rds_pipeline.engine.config import CONFIG_ENV_VAR, load_config, parse_config
from rds_pipeline.engine.errors import ConfigError
from rds_pipeline.engine.secrets import Secret

VALID = """
integration_name: Stitch Amazon PostgreSQL RDS
source:
  host: mydb.abc.us-east-1.rds.amazonaws.com   # no port here
  port: 5432
  user: stitch
  password: ${RDS_PASSWORD}
  database: app
  ssl: {mode: verify-full, root_cert: rds-ca.pem, client_cert: null, client_key: null}
  ssh: {host: bastion.example.com, port: 22, user: ec2-user, private_key: id_ed25519,
        passphrase: ${SSH_PASSPHRASE}, known_hosts: known_hosts, host_key_fingerprint: null}
destination: {type: postgres, host: warehouse.internal, port: 5432, user: loader, password: ${DEST_PASSWORD},
              database: dw}
"""


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "rds-ca.pem").write_text("ca")
    (tmp_path / "id_ed25519").write_text("key")
    monkeypatch.setenv("RDS_PASSWORD", "pw-source-123")
    monkeypatch.setenv("SSH_PASSPHRASE", "pass-phrase-456")
    monkeypatch.setenv("DEST_PASSWORD", "pw-dest-789")
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "rds_pipeline.yaml"
    path.write_text(text)
    return path


def problems(text: str, directory: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(directory, text))
    return info.value.problems


def test_the_documented_shape_loads_with_secrets_from_the_environment(config_dir: Path) -> None:
    config = load_config(write(config_dir, VALID))
    assert config.integration_name == "Stitch Amazon PostgreSQL RDS"
    assert config.source.host == "mydb.abc.us-east-1.rds.amazonaws.com"
    assert config.source.password.reveal() == "pw-source-123"
    assert config.source.ssl.mode == "verify-full"
    assert config.source.ssl.root_cert == config_dir / "rds-ca.pem"  # relative to the config file
    assert config.source.ssh is not None
    assert config.source.ssh.passphrase == Secret("pass-phrase-456")
    assert config.source.ssh.known_hosts == config_dir / "known_hosts"
    assert config.destination.password is not None and config.destination.password.reveal() == "pw-dest-789"
    assert "pw-source-123" not in repr(config) and "pass-phrase-456" not in repr(config)


def test_config_is_found_through_the_environment_variable(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = write(config_dir, VALID)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    monkeypatch.setenv(CONFIG_ENV_VAR, str(path))
    assert load_config().source.database == "app"


def test_missing_file_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(CONFIG_ENV_VAR, raising=False)
    with pytest.raises(ConfigError, match=r"rds_pipeline.yaml not found.*RDS_PIPELINE_CONFIG"):
        load_config()


@pytest.mark.parametrize("host", ["mydb.abc.us-east-1.rds.amazonaws.com:5432", "10.0.0.5:6543"])
def test_a_host_with_a_port_is_rejected_with_the_fix(config_dir: Path, host: str) -> None:
    found = problems(VALID.replace("mydb.abc.us-east-1.rds.amazonaws.com", host), config_dir)
    port = host.rsplit(":", 1)[1]
    assert found == [
        f"source.host: '{host}' includes a port. Fix: remove ':{port}' from the host and put it "
        f"in `source.port: {port}`"
    ]


def test_an_unset_environment_variable_names_the_key_and_the_variable(
    config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RDS_PASSWORD")
    found = problems(VALID, config_dir)
    assert len(found) == 1
    assert found[0].startswith("source.password: environment variable RDS_PASSWORD is not set. Fix: export")


def test_every_problem_is_reported_at_once(config_dir: Path) -> None:
    text = VALID.replace("port: 5432\n", "port: fivefourthreetwo\n").replace("user: stitch", "usr: stitch")
    text = text.replace("mode: verify-full", "mode: verify-everything")
    found = "\n".join(problems(text, config_dir))
    assert "source.port: expected a whole number, got 'fivefourthreetwo'" in found
    assert "source.usr: unknown key. Fix: remove it or rename it; did you mean 'user'?" in found
    assert "source.user: is required" in found
    assert "source.ssl.mode: 'verify-everything' is not an SSL mode. Fix: use one of disable" in found


def test_verify_full_without_a_ca_bundle_points_to_the_rds_bundle(config_dir: Path) -> None:
    found = problems(VALID.replace("root_cert: rds-ca.pem", "root_cert: null"), config_dir)
    assert found == [
        "source.ssl.root_cert: mode verify-full needs the CA bundle. Fix: download the RDS bundle from "
        "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem and set root_cert to its path"
    ]


def test_missing_files_and_bad_fingerprints_are_named(config_dir: Path) -> None:
    text = VALID.replace("private_key: id_ed25519", "private_key: nope_key").replace(
        "host_key_fingerprint: null", "host_key_fingerprint: MD5:aa:bb"
    )
    found = "\n".join(problems(text, config_dir))
    assert f"source.ssh.private_key: file {config_dir / 'nope_key'} does not exist" in found
    assert "source.ssh.host_key_fingerprint: 'MD5:aa:bb' is not a SHA256 fingerprint" in found


def test_duckdb_destination_needs_only_a_path(config_dir: Path) -> None:
    config = parse_config(
        {
            "integration_name": "x",
            "source": {"host": "h", "user": "u", "password": "p", "database": "d"},
            "destination": {"type": "duckdb", "path": "out/replica.duckdb"},
        },
        base_dir=config_dir,
    )
    assert config.destination.path == config_dir / "out" / "replica.duckdb"
    with pytest.raises(ConfigError, match=r"destination.type: 'snowflake' is not supported"):
        parse_config(
            {
                "integration_name": "x",
                "source": {"host": "h", "user": "u", "password": "p", "database": "d"},
                "destination": {"type": "snowflake"},
            }
        )


def test_a_non_string_password_is_rejected_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "integration_name": "x",
                "source": {"host": "h", "user": "u", "password": ["hunter2"], "database": "d"},
                "destination": {"type": "duckdb", "path": "x.duckdb"},
            }
        )
    assert "source.password: expected a string" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_parallel_chunks_and_copy_format_are_checked(config_dir: Path) -> None:
    """`parallel_chunks` never exceeds the source's connection cap; `copy_format` is one of three; each problem
    names its field and the fix."""
    config = load_config(
        write(
            config_dir,
            VALID.replace(
                "  database: app\n",
                "  database: app\n  max_connections: 4\n  parallel_chunks: 4\n  copy_format: text\n",
            ),
        )
    )
    assert (config.source.parallel_chunks, config.source.copy_format) == (4, "text")
    default = load_config(write(config_dir, VALID)).source
    assert (default.parallel_chunks, default.copy_format) == (1, "auto")
    found = "\n".join(
        problems(
            VALID.replace("  database: app\n", "  database: app\n  parallel_chunks: 3\n  copy_format: csv\n"),
            config_dir,
        )
    )
    assert "source.parallel_chunks: 3 is out of range. Fix: use a value from 1 to 2" in found
    assert "source.copy_format: 'csv' is not one of auto, text, binary" in found


def test_owners_and_tags_are_checked_before_dagster_sees_them(config_dir: Path) -> None:
    text = (
        VALID
        + 'owners: [data@example.com, "team:analytics", nobody]\ntags: {domain: sales, "dagster/kind": x, tier: "a b"}\n'
    )
    found = "\n".join(problems(text, config_dir))
    assert "owners: 'nobody' is not an owner. Fix: use an email or team:<name>" in found
    assert "tags.dagster/kind: the prefixes dagster/ and rds_pipeline/ are reserved" in found
    assert "tags.tier: 'a b' is not a valid tag value" in found
    good = load_config(write(config_dir, VALID + "owners: [data@example.com]\ntags: {domain: sales}\n"))
    assert good.owners == ("data@example.com",) and good.tags == {"domain": "sales"}


def test_on_slot_lost_defaults_to_resnapshot_and_refuses_other_words(config_dir: Path) -> None:
    assert load_config(write(config_dir, VALID)).log_based.on_slot_lost == "resnapshot"
    assert load_config(write(config_dir, VALID + "log_based: {on_slot_lost: fail}\n")).log_based.on_slot_lost == "fail"
    assert problems(VALID + "log_based: {on_slot_lost: panic}\n", config_dir) == [
        "log_based.on_slot_lost: 'panic' is not one of resnapshot, fail. Fix: write e.g. `on_slot_lost: resnapshot`"
    ]
