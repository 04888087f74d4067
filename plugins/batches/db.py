"""The batches' tables (component ``batches``): uploaded files, batches, and one row
per input line, whose status moves pending -> done | failed exactly once."""

from __future__ import annotations

from proxy.store import Migration

TABLES = (
    """create table if not exists tollway_files (
        id text primary key,
        account_id text,
        key_id text,
        purpose text not null,
        filename text not null,
        bytes integer not null,
        created_at double precision not null,
        content text not null)""",
    """create table if not exists tollway_batches (
        id text primary key,
        account_id text,
        key_id text,
        endpoint text not null,
        input_file_id text not null,
        completion_window text not null,
        metadata text,
        status text not null,
        total integer not null,
        created_at double precision not null,
        in_progress_at double precision,
        completed_at double precision,
        cancelling_at double precision,
        cancelled_at double precision)""",
    """create table if not exists tollway_batch_lines (
        batch_id text not null,
        line integer not null,
        custom_id text not null,
        body text,
        status text not null,
        status_code integer,
        response text,
        error_code text,
        error_message text,
        cost_micro_usd bigint not null default 0,
        charged integer not null default 0,
        primary key (batch_id, line))""",
    "create index if not exists tollway_batch_lines_status on tollway_batch_lines (batch_id, status)",
    "create index if not exists tollway_batches_status on tollway_batches (status, created_at)",
)

MIGRATIONS = (
    Migration(1, "files, batches and their lines", TABLES),
    # A line's usage as its ledger row has it, for the row a recovery writes when the charge was
    # lost (NULL: stored before this migration; the recovery reads the answer's usage then).
    Migration(2, "batch_lines.tokens", (
        "alter table tollway_batch_lines add column prompt_tokens integer",
        "alter table tollway_batch_lines add column completion_tokens integer",
        "alter table tollway_batch_lines add column cached_tokens integer",
        "alter table tollway_batch_lines add column reasoning_tokens integer",
        "alter table tollway_batch_lines add column estimated integer not null default 0")),
)

BATCH_COLUMNS = ("id", "account_id", "key_id", "endpoint", "input_file_id", "completion_window", "metadata",
                 "status", "total", "created_at", "in_progress_at", "completed_at", "cancelling_at", "cancelled_at")
FILE_COLUMNS = ("id", "account_id", "key_id", "purpose", "filename", "bytes", "created_at")
