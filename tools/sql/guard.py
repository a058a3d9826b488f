"""The first line of defence: sqlglot must read exactly one read-only statement.

The engines' own read-only modes are the second line (see engines.py); this check gives
a clear reason early and catches what a read-only connection would still run (side
effects of functions, runaway locks).
"""

from __future__ import annotations

import logging

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

# Statement kinds that write, change the schema or the session, or reach outside the database.
_FORBIDDEN_NODES: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name) for name in (
        "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter", "TruncateTable", "Command",
        "Pragma", "Copy", "Set", "Use", "Transaction", "Commit", "Rollback", "Attach", "Detach",
        "Into", "Lock", "LoadData", "Grant", "Revoke", "Analyze", "Export", "Install",
    ) if hasattr(exp, name))

# Functions with side effects or access to files, processes or the network.
FORBIDDEN_FUNCTIONS = frozenset({
    "load_extension", "readfile", "writefile", "edit", "fts3_tokenizer",  # SQLite
    "pg_sleep", "pg_sleep_for", "pg_sleep_until", "pg_read_file", "pg_read_binary_file", "pg_ls_dir",
    "pg_stat_file", "lo_import", "lo_export", "lo_unlink", "dblink", "dblink_exec", "nextval", "setval",
    "pg_terminate_backend", "pg_cancel_backend", "pg_reload_conf", "pg_rotate_logfile", "set_config",
    "pg_advisory_lock", "pg_advisory_xact_lock", "txid_current", "pg_notify", "query_to_xml",
    "ts_stat", "ts_rewrite", "query_to_xmlschema", "query_to_xml_and_xmlschema",  # run SQL given as text
    "getenv", "json_execute_serialized_sql", "httpfs", "install", "load",  # DuckDB; table functions: below
})

# DuckDB reads files and URLs and runs SQL given as text through table functions (read_csv,
# parquet_scan, sniff_csv, query, json_execute_serialized_sql, ...; each extension adds more),
# too many to deny by name: in FROM only these may appear.
DUCKDB_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

# What makes a table name a file or URL to DuckDB's replacement scans (see _check_duckdb_table_names).
_PATH_CHARACTERS = frozenset("/\\:*?")
_FILE_SUFFIXES = (".csv", ".tsv", ".parquet", ".json", ".jsonl", ".ndjson", ".gz", ".zst", ".xlsx")

# PostgreSQL's administration, file, WAL, replication, lock and large-object functions: too
# many to list one by one (pg_create_physical_replication_slot, pg_stat_reset, pg_switch_wal,
# lo_create, pg_try_advisory_lock, ...), and some outlive the rolled-back transaction.
FORBIDDEN_PREFIXES = ("pg_", "lo_", "dblink")

# What tells a reader about the server rather than the data, refused on every role (a
# superuser's connection would otherwise hand out password hashes, the data directory and
# the server's settings): settings, versions, addresses, roles, and the catalogs behind them.
DISCLOSING_FUNCTIONS = frozenset({
    "current_setting", "current_version", "version", "inet_server_addr", "inet_server_port",
    "inet_client_addr", "inet_client_port", "current_user", "session_user", "current_role", "user",
    "system_user", "current_database", "current_catalog", "current_schema", "current_schemas",
    "current_query", "getpgusername", "has_table_privilege", "has_column_privilege",
    "has_database_privilege", "has_schema_privilege", "has_function_privilege", "has_parameter_privilege",
    "has_any_column_privilege", "has_foreign_data_wrapper_privilege", "has_language_privilege",
    "has_sequence_privilege", "has_server_privilege", "has_tablespace_privilege", "has_type_privilege",
    "obj_description", "col_description", "shobj_description", "to_regrole", "to_regnamespace",
    "acldefault", "aclexplode", "txid_current_snapshot", "txid_status",
    "getvariable", "which_secret", "current_localtimestamp",  # DuckDB
    "sqlite_source_id", "sqlite_compileoption_get", "sqlite_compileoption_used", "sqlite_offset",  # SQLite
})
DISCLOSING_PREFIXES = ("pg_", "duckdb_", "pragma_")
"""Functions and tables: PostgreSQL's catalogs (pg_authid, pg_shadow, pg_hba_file_rules,
pg_file_settings, pg_settings, pg_stat_activity, ...), DuckDB's metadata functions
(duckdb_settings(), duckdb_extensions(), ...), SQLite's and DuckDB's pragma functions
(pragma_database_list names the database file, pragma_compile_options the build)."""
SCHEMA_PRAGMAS = frozenset({"pragma_table_info", "pragma_table_xinfo", "pragma_index_list", "pragma_index_info",
                            "pragma_index_xinfo", "pragma_foreign_key_list"})
"""Pragma functions that read the database's own schema, nothing outside it: allowed."""
DISCLOSING_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
"""Schemas whose every table describes the server: its roles, settings and privileges."""


class _QuietCommandFallback(logging.Filter):
    """sqlglot warns when it parses an unsupported statement as a generic Command; we reject
    those statements ourselves, with a reason, so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


logging.getLogger("sqlglot").addFilter(_QuietCommandFallback())


class RejectedSQL(ValueError):
    """Model-written SQL that is not one read-only statement; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _function_name(node: exp.Func) -> str:
    return str(node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _function_names(tree: exp.Expression) -> set[str]:
    return {_function_name(node) for node in tree.find_all(exp.Func)}


def _check_duckdb_table_functions(tree: exp.Expression) -> None:
    """DuckDB's table functions read files and URLs or run SQL text: in FROM, JOIN and LATERAL
    only DUCKDB_TABLE_FUNCTIONS may appear (an allowlist, as extensions keep adding readers)."""
    for node in tree.find_all(exp.Func):
        in_from = isinstance(node.parent, (exp.Table, exp.Lateral, exp.From, exp.Join)) and node.arg_key == "this"
        if in_from and _function_name(node) not in DUCKDB_TABLE_FUNCTIONS:
            raise RejectedSQL(f"table function {_function_name(node)} is not allowed in FROM on DuckDB "
                              f"(allowed: {', '.join(sorted(DUCKDB_TABLE_FUNCTIONS))})")


def _check_duckdb_table_names(tree: exp.Expression, sql: str) -> None:
    """DuckDB's replacement scans read `FROM '/etc/passwd'`, `FROM "x.csv"` or `FROM x.csv` as
    files when no such table exists: refuse strings and file-like names as tables."""
    for table in tree.find_all(exp.Table):
        parts = [part for part in table.parts if isinstance(part, exp.Identifier)]
        if any(sql[part.meta["start"]:part.meta["start"] + 1] == "'" for part in parts if "start" in part.meta):
            raise RejectedSQL(f"a string as a table ({table.name!r}) is not allowed: DuckDB reads it as a file or URL")
        name = ".".join(part.name for part in parts)
        if _PATH_CHARACTERS & set(name) or name.lower().endswith(_FILE_SUFFIXES):
            raise RejectedSQL(f"table {name!r} is not allowed: DuckDB reads a name like a file's as that file")


def _check_disclosure(tree: exp.Expression) -> None:
    """Refuse what discloses the server (see DISCLOSING_FUNCTIONS): on every engine and role."""
    for name in sorted(_function_names(tree) - SCHEMA_PRAGMAS):
        if name in DISCLOSING_FUNCTIONS or name.startswith(DISCLOSING_PREFIXES):
            raise RejectedSQL(f"function {name} is not allowed: it discloses the server, not the data")
    for table in tree.find_all(exp.Table):
        schema, name = (table.db or "").lower(), (table.name or "").lower()
        if schema in DISCLOSING_SCHEMAS or schema.startswith(DISCLOSING_PREFIXES):
            raise RejectedSQL(f"schema {schema} is not allowed: its tables describe the server, not the data")
        if name.startswith(DISCLOSING_PREFIXES) and name not in SCHEMA_PRAGMAS:
            raise RejectedSQL(f"table {name} is not allowed: it describes the server, not the data")


def _unicode_escaped_identifier(sql: str, dialect: str) -> bool:
    """Whether `sql` holds U&"..." (U, & and a quoted identifier with nothing between)."""
    try:
        tokens = sqlglot.tokenize(sql, read=dialect)
    except SqlglotError:  # a tokenizer error is reported by the parser below
        return False
    for u, amp, ident in zip(tokens, tokens[1:], tokens[2:]):
        if (u.text.upper() == "U" and amp.token_type == TokenType.AMP and ident.token_type == TokenType.IDENTIFIER
                and u.end + 1 == amp.start and amp.end + 1 == ident.start):
            return True
    return False


def check_read_only(sql: str, dialect: str = "sqlite") -> exp.Expression:
    """The parsed statement if `sql` is exactly one read statement (SELECT, WITH ... SELECT,
    UNION / INTERSECT / EXCEPT); otherwise RejectedSQL with the reason."""
    if not sql or not sql.strip():
        raise RejectedSQL("empty statement")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no engine can be sent it
        raise RejectedSQL(f"not valid Unicode text: {exc.reason} at character {exc.start}") from None
    try:
        return _check(sql, dialect)
    except RecursionError:  # sqlglot's parser and tree walks recurse once per nesting level
        raise RejectedSQL("nested too deeply for the guard to read (parentheses or subqueries)") from None


def _check(sql: str, dialect: str) -> exp.Expression:
    if _unicode_escaped_identifier(sql, dialect):
        # PostgreSQL decodes U&"\0070g_sleep" to pg_sleep; sqlglot reads it as `U & "..."`
        raise RejectedSQL('Unicode-escaped identifiers (U&"...") are not allowed')
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except SqlglotError as exc:  # ParseError, TokenError, ...
        first = str(exc).splitlines()[0]
        raise RejectedSQL(f"not parseable as {dialect} SQL: {first}") from None
    if len(statements) != 1:
        raise RejectedSQL(f"exactly one statement is allowed, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        raise RejectedSQL(f"only read statements are allowed, got {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise RejectedSQL(f"{node.key.upper()} is not allowed inside a read statement")
    banned = {name for name in _function_names(tree)
              if name in FORBIDDEN_FUNCTIONS or name.startswith(FORBIDDEN_PREFIXES)}
    if banned:
        raise RejectedSQL(f"function {sorted(banned)[0]} is not allowed (side effects or outside access)")
    _check_disclosure(tree)
    if dialect == "duckdb":
        _check_duckdb_table_functions(tree)
        _check_duckdb_table_names(tree, sql)
    return tree
