"""A real OpenSSH sshd on a random port, with a temporary host key and authorized_keys."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from rds_pipeline.local_postgres import free_port

SSHD = Path("/usr/sbin/sshd")


@dataclass
class ClientKey:
    path: Path
    passphrase: str | None
    public: str


def keygen(path: Path, kind: str, passphrase: str | None = None) -> ClientKey:
    """Make a key pair with ssh-keygen (OpenSSH format); ``kind`` is ed25519, ecdsa or rsa."""
    args = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase or "", "-f", str(path), "-C", f"rds-test-{kind}"]
    if kind == "rsa":
        args += ["-b", "3072"]
    subprocess.run(args, check=True, capture_output=True)
    return ClientKey(path, passphrase, path.with_suffix(".pub").read_text().strip())


class SshServer:
    """sshd -D on 127.0.0.1:<port>, allowing TCP forwarding, for the current user."""

    def __init__(self, directory: Path, authorized: list[ClientKey]) -> None:
        self.dir = directory
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = directory / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True)
        self.authorized_keys = directory / "authorized_keys"
        self.authorized_keys.write_text("".join(k.public + "\n" for k in authorized))
        self.authorized_keys.chmod(0o600)
        self.config = directory / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {directory / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "StrictModes no",
                    "UsePAM no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host_key_line(self) -> str:
        """The known_hosts line for this server (``[127.0.0.1]:port key``)."""
        kind, blob = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {blob}\n"

    @property
    def fingerprint(self) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.host_key) + ".pub"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.split()[1]

    def start(self) -> SshServer:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir
        log = (self.dir / "sshd.log").open("wb")
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def sshd_available() -> str | None:
    """None when sshd and ssh-keygen exist, else the reason the tunnel tests cannot run."""
    if not SSHD.exists():
        return "OpenSSH sshd is not installed (apt-get install openssh-server; .ci/run does this)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    return None
