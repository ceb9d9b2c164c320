"""The setup guide's SQL for a least-privilege replication user, printed for a DBA to run.

The password never appears in the output: we print a SCRAM-SHA-256 verifier, which PostgreSQL stores as is
(``CREATE USER ... PASSWORD 'SCRAM-SHA-256$...'``), so the plain text stays out of terminals, shell history
and the server's statement log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from dataclasses import dataclass, field

from rds_pipeline.engine.quoting import quote_ident, quote_literal

SCRAM_ITERATIONS = 4096


def _saslprep(password: str) -> bytes:
    """RFC 4013 SASLprep as PostgreSQL applies it; like the server, fall back to the raw bytes if it fails."""
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch for ch in password if not stringprep.in_table_b1(ch))
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
    )
    if not normalized or any(check(ch) for ch in normalized for check in prohibited):
        return password.encode()
    return normalized.encode()


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL would store for ``password`` (RFC 5802 / 7677)."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


@dataclass
class GrantRequest:
    user: str
    password: str | None
    database: str
    schemas: list[str] = field(default_factory=lambda: ["public"])
    tables: list[tuple[str, str]] = field(default_factory=list)  # (schema, table); empty = all tables
    log_based: bool = False
    rds: bool = True
    owner: str | None = None  # role that creates future tables, for ALTER DEFAULT PRIVILEGES FOR ROLE


def grants_sql(request: GrantRequest) -> str:
    """The statements, in the order a DBA runs them, with comments saying why."""
    user = quote_ident(request.user)
    lines = [f"-- rds_pipeline: least-privilege replication user {request.user} (run as an admin user)"]
    if request.password is not None:
        lines.append("-- The password is given as its SCRAM-SHA-256 verifier, so the plain text never appears.")
        lines.append(f"CREATE USER {user} WITH ENCRYPTED PASSWORD {quote_literal(scram_verifier(request.password))};")
    else:
        lines.append(f"-- (user {request.user} exists already: no CREATE USER)")
    lines.append(f"GRANT CONNECT ON DATABASE {quote_ident(request.database)} TO {user};")
    lines.append(f"-- Run the following while connected to database {request.database}:")
    for schema in request.schemas:
        lines.append(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {user};")
    if request.tables:
        for schema, table in request.tables:
            lines.append(f"GRANT SELECT ON TABLE {quote_ident(schema)}.{quote_ident(table)} TO {user};")
    else:
        for schema in request.schemas:
            lines.append(f"GRANT SELECT ON ALL TABLES IN SCHEMA {quote_ident(schema)} TO {user};")
    lines.append("-- Tables created later stay readable (applies to tables created by the role named in FOR ROLE,")
    lines.append("-- or by the role running this statement):")
    for_role = f" FOR ROLE {quote_ident(request.owner)}" if request.owner else ""
    for schema in request.schemas:
        lines.append(
            f"ALTER DEFAULT PRIVILEGES{for_role} IN SCHEMA {quote_ident(schema)} GRANT SELECT ON TABLES TO {user};"
        )
    if request.log_based:
        if request.rds:
            lines.append("-- Log-based replication on Amazon RDS:")
            lines.append(f"GRANT rds_replication TO {user};")
        else:
            lines.append("-- Log-based replication (self-managed PostgreSQL):")
            lines.append(f"ALTER ROLE {user} REPLICATION;")
    return "\n".join(lines) + "\n"
