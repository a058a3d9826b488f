"""The SQL that makes a PostgreSQL role fit to run model-written SQL: it may log in, read
one schema's tables and nothing else, and its sessions are read-only and time-limited.

`refinegraph sql grant` prints these statements (and runs them with --apply, as an admin).
The role is what `[sql] allow_privileged_postgres_role = false` (the default) asks for:
not a superuser, no write or create privilege anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass


class GrantError(ValueError):
    """A role or schema name that cannot be used, or a role that already has more power."""


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (so case and odd characters are kept)."""
    if not name or "\x00" in name or len(name.encode()) > 63:
        raise GrantError(f"{name!r} is not a usable PostgreSQL name (1 to 63 bytes, no NUL)")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class ReadOnlyRole:
    """What the role may do: read `schema` of `database`, within the limits below."""

    role: str
    schema: str
    database: str
    statement_timeout_ms: int = 5000
    temp_file_limit_kb: int = 256 * 1024
    work_mem_kb: int = 64 * 1024
    password: str | None = None

    def create_statement(self) -> str:
        password = f" PASSWORD {quote_literal(self.password)}" if self.password else ""
        return (f"CREATE ROLE {quote_ident(self.role)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT "
                f"NOREPLICATION NOBYPASSRLS{password}")

    def grant_statements(self) -> list[str]:
        """Everything after CREATE ROLE: privileges and the role's session settings."""
        role, schema, database = quote_ident(self.role), quote_ident(self.schema), quote_ident(self.database)
        return [
            f"GRANT CONNECT ON DATABASE {database} TO {role}",
            f"GRANT USAGE ON SCHEMA {schema} TO {role}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
            f"ALTER ROLE {role} SET default_transaction_read_only = on",
            f"ALTER ROLE {role} SET statement_timeout = {quote_literal(f'{self.statement_timeout_ms}ms')}",
            f"ALTER ROLE {role} SET work_mem = {quote_literal(f'{self.work_mem_kb}kB')}",
            # only a superuser may set this one (per role, once); sessions of the role cannot raise it
            f"ALTER ROLE {role} SET temp_file_limit = {quote_literal(f'{self.temp_file_limit_kb}kB')}",
            f"ALTER ROLE {role} SET search_path = {schema}",
        ]

    def statements(self) -> list[str]:
        return [self.create_statement(), *self.grant_statements()]


_ROLE_POWERS = """
SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = %s
"""


def apply(dsn: str, spec: ReadOnlyRole) -> list[str]:
    """Run the statements as the DSN's (admin) role in one transaction; the ones run.

    An existing role is kept (CREATE ROLE is skipped) only if it has none of the powers
    this role must not have; otherwise GrantError, and nothing is changed."""
    import psycopg

    done = []
    with psycopg.connect(dsn, autocommit=False) as conn:
        row = conn.execute(_ROLE_POWERS, (spec.role,)).fetchone()
        if row is not None and any(row):
            raise GrantError(f"role {spec.role!r} exists and is a superuser or may create databases, roles or "
                             "replication, or bypasses row security: choose another name")
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (spec.schema,)).fetchone():
            raise GrantError(f"schema {spec.schema!r} does not exist in this database")
        statements = spec.grant_statements() if row is not None else spec.statements()
        for statement in statements:
            conn.execute(statement.encode())
            done.append(statement)
        conn.commit()
    return done
