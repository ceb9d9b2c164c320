"""An SSH tunnel to the database through a bastion, written on paramiko directly.

Why not sshtunnel or dagster-ssh: sshtunnel 0.4 crashes with paramiko >= 4, and dagster-ssh accepts any host
key by default. Here the bastion's host key must be in ``known_hosts`` or match a pinned ``SHA256:``
fingerprint; an unknown key is refused unless the user opts in with ``trust_unknown_host_key: true``.

The tunnel listens on 127.0.0.1 on a free port and forwards each accepted connection over one SSH transport.
Its threads are daemons and ``close()`` joins them, so a process never hangs at exit or leaks sockets.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from pathlib import Path
from types import TracebackType

import paramiko

from rds_pipeline.engine.config import SshConfig
from rds_pipeline.engine.errors import ConnectionProblem

log = logging.getLogger(__name__)
_BUFFER = 64 * 1024


def load_private_key(path: Path, passphrase: str | None) -> paramiko.PKey:
    """Load an ed25519, ECDSA or RSA key file (OpenSSH or PEM format), decrypting it with ``passphrase``."""
    if not path.is_file():
        raise ConnectionProblem(
            "ssh_key_missing", f"SSH private key {path} does not exist.", "set source.ssh.private_key to the key file"
        )
    try:
        # cryptography takes the passphrase as bytes (types-paramiko says str)
        return paramiko.PKey.from_path(path, passphrase.encode() if passphrase else None)  # type: ignore[arg-type]
    except TypeError as exc:  # cryptography says whether a passphrase was missing or superfluous
        if "not encrypted" in str(exc):
            raise ConnectionProblem(
                "ssh_key_passphrase",
                f"SSH private key {path} is not encrypted, but a passphrase was given.",
                "remove source.ssh.passphrase",
            ) from None
        raise ConnectionProblem(
            "ssh_key_passphrase",
            f"SSH private key {path} is encrypted and no passphrase was given.",
            "set source.ssh.passphrase: ${SSH_PASSPHRASE} and export SSH_PASSPHRASE",
        ) from None
    except (ValueError, paramiko.SSHException) as exc:
        if passphrase and _is_encrypted(path):
            raise ConnectionProblem(
                "ssh_key_passphrase",
                f"Could not decrypt SSH private key {path}: the passphrase is wrong.",
                "correct the value behind source.ssh.passphrase",
            ) from None
        raise ConnectionProblem(
            "ssh_key_invalid",
            f"Could not read SSH private key {path}: {exc}. "
            "Supported: ed25519, ECDSA and RSA keys in OpenSSH or PEM format.",
            "point source.ssh.private_key at the private key file (not the .pub file)",
        ) from None


def _is_encrypted(path: Path) -> bool:
    """True when the key file loads only with a passphrase (cryptography raises TypeError without one)."""
    try:
        paramiko.PKey.from_path(path, None)
    except TypeError:
        return True
    except (ValueError, paramiko.SSHException):
        return False
    return False


class _HostKeyGate(paramiko.MissingHostKeyPolicy):
    """Decides about a host key not found in known_hosts: accept only a pinned match or an explicit opt-in."""

    def __init__(self, config: SshConfig) -> None:
        self.config = config

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fingerprint = key.fingerprint
        pinned = self.config.host_key_fingerprint
        if pinned:
            if fingerprint == pinned:
                return
            raise ConnectionProblem(
                "ssh_host_key_changed",
                f"SSH host key of {hostname} is {key.get_name()} {fingerprint}, but the pinned fingerprint is "
                f"{pinned}. The bastion's key changed, or someone is intercepting the connection.",
                "confirm the new key with the bastion's owner, then update source.ssh.host_key_fingerprint",
            )
        if self.config.trust_unknown_host_key:
            log.warning(
                "Trusting unknown SSH host key %s %s for %s (trust_unknown_host_key: true)",
                key.get_name(),
                fingerprint,
                hostname,
            )
            return
        port_option = f"-p {self.config.port} " if self.config.port != 22 else ""
        raise ConnectionProblem(
            "ssh_host_key_unknown",
            f"SSH host key of {hostname} ({key.get_name()} {fingerprint}) is not in {self.config.known_hosts}. "
            "rds_pipeline refuses unknown host keys.",
            f"check the fingerprint with the bastion's owner, then either run `ssh-keyscan {port_option}"
            f"{self.config.host} >> {self.config.known_hosts}`, or set source.ssh.host_key_fingerprint: "
            f"{fingerprint}. (Opting out of the check, trust_unknown_host_key: true, is not recommended.)",
        )


class SshTunnel:
    """Forwards 127.0.0.1:<local_port> to ``remote_host:remote_port`` as seen from the bastion."""

    def __init__(self, config: SshConfig, remote_host: str, remote_port: int) -> None:
        self.config = config
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._client: paramiko.SSHClient | None = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket | paramiko.Channel] = set()
        self._lock = threading.Lock()
        self.local_port = 0

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> SshTunnel:
        """Connect, verify the host key, authenticate, check the database is reachable, then listen."""
        key = load_private_key(
            self.config.private_key, self.config.passphrase.reveal() if self.config.passphrase else None
        )
        client = paramiko.SSHClient()
        if not self.config.host_key_fingerprint and self.config.known_hosts and self.config.known_hosts.is_file():
            client.load_system_host_keys(str(self.config.known_hosts))
        client.set_missing_host_key_policy(_HostKeyGate(self.config))
        target = f"{self.config.user}@{self.config.host}:{self.config.port}"
        try:
            client.connect(
                self.config.host,
                port=self.config.port,
                username=self.config.user,
                pkey=key,
                timeout=self.config.connect_timeout,
                banner_timeout=self.config.connect_timeout,
                auth_timeout=self.config.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except ConnectionProblem:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise ConnectionProblem(
                "ssh_host_key_changed",
                f"SSH host key of {self.config.host} CHANGED: known_hosts has {exc.expected_key.get_name()} "
                f"{exc.expected_key.fingerprint}, the server sent {exc.key.get_name()} {exc.key.fingerprint}. "
                "The bastion was rebuilt, or someone is intercepting the connection.",
                f"confirm the new key with the bastion's owner, then remove the old entry with "
                f"`ssh-keygen -R {self._known_hosts_name()} -f {self.config.known_hosts}` and add the new one",
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise ConnectionProblem(
                "ssh_auth",
                f"SSH authentication failed for {target} with key {self.config.private_key} "
                f"({key.get_name()} {key.fingerprint}).",
                f"add the public key to ~{self.config.user}/.ssh/authorized_keys on the bastion, "
                "or correct source.ssh.user / source.ssh.private_key",
            ) from None
        except socket.gaierror:
            client.close()
            raise ConnectionProblem(
                "ssh_dns",
                f"SSH bastion host name '{self.config.host}' does not resolve.",
                "correct source.ssh.host (the bastion's public DNS name or IP)",
            ) from None
        except TimeoutError:
            client.close()
            raise ConnectionProblem(
                "ssh_timeout",
                f"Connecting to the SSH bastion {target} timed out after {self.config.connect_timeout}s.",
                "allow inbound TCP on the SSH port from this machine in the bastion's security group",
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            raise ConnectionProblem(
                "ssh_connect",
                f"Could not open an SSH session to {target}: {type(exc).__name__}: {exc}",
                "check that sshd runs on the bastion at source.ssh.host / source.ssh.port and is reachable",
            ) from None
        self._client = client
        transport = client.get_transport()
        assert transport is not None
        if self.config.keepalive_seconds:
            transport.set_keepalive(self.config.keepalive_seconds)
        self._probe_remote(transport)
        self._listen()
        return self

    def close(self) -> None:
        """Stop forwarding, close every socket and channel, and join the threads."""
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        with self._lock:
            endpoints = list(self._open)
            self._open.clear()
        # local sockets first: closing a channel can block on a frozen bastion, and the database client
        # waiting on its local socket must get its EOF regardless
        for endpoint in sorted(endpoints, key=lambda e: isinstance(e, paramiko.Channel)):
            try:
                endpoint.close()
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> SshTunnel:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_active(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active() and not self._stop.is_set())

    # -- internals -----------------------------------------------------------------------------------------
    def _known_hosts_name(self) -> str:
        return self.config.host if self.config.port == 22 else f"[{self.config.host}]:{self.config.port}"

    def _open_channel(self, transport: paramiko.Transport, origin: tuple[str, int]) -> paramiko.Channel:
        try:
            return transport.open_channel(
                "direct-tcpip", (self.remote_host, self.remote_port), origin, timeout=self.config.connect_timeout
            )
        except (paramiko.ChannelException, paramiko.SSHException, OSError) as exc:
            raise ConnectionProblem(
                "ssh_target_unreachable",
                f"The bastion {self.config.host} cannot reach the database at {self.remote_host}:{self.remote_port} "
                f"({exc}).",
                "allow inbound TCP on the database port from the bastion in the database's security group, "
                "and check source.host / source.port (the address as seen from the bastion; AllowTcpForwarding "
                "must be on in the bastion's sshd_config)",
            ) from None

    def _probe_remote(self, transport: paramiko.Transport) -> None:
        """Open and close one channel now, so an unreachable database is reported clearly and early."""
        try:
            self._open_channel(transport, ("127.0.0.1", 0)).close()
        except ConnectionProblem:
            self.close()
            raise

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.5)
        self._listener = listener
        self.local_port = listener.getsockname()[1]
        self._spawn(self._accept_loop, "rds-ssh-accept")
        log.info(
            "SSH tunnel 127.0.0.1:%s -> %s -> %s:%s open",
            self.local_port,
            self.config.host,
            self.remote_host,
            self.remote_port,
        )

    def _spawn(self, target: object, name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                local, origin = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            transport = self._client.get_transport() if self._client else None
            if transport is None or not transport.is_active():
                log.error("SSH transport to %s is down; refusing a tunnel connection", self.config.host)
                local.close()
                continue
            try:
                channel = self._open_channel(transport, origin)
            except ConnectionProblem as exc:
                log.error("%s", exc)
                local.close()
                continue
            with self._lock:
                self._open.update((local, channel))
            self._spawn(self._pump, "rds-ssh-pump", local, channel)

    def _pump(self, local: socket.socket, channel: paramiko.Channel) -> None:
        try:
            while not self._stop.is_set():
                watched: list[socket.socket | paramiko.Channel] = [local, channel]
                readable, _, _ = select.select(watched, [], [], 0.5)
                if local in readable:
                    data = local.recv(_BUFFER)
                    if not data:
                        break
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(_BUFFER)
                    if not data:
                        break
                    local.sendall(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the bastion or the client went away: both ends are closed below (the client retries)
        finally:
            with self._lock:
                self._open.discard(local)
                self._open.discard(channel)
            local.close()  # first: closing the channel can block on a frozen bastion
            channel.close()
