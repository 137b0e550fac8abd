"""The local instance's event log: Dagster's one-file SQLite storage, with one engine instead of one per write.

`ConsolidatedSqliteEventLogStorage` (dagster.dev.yaml, why one file: see there) creates a new SQLAlchemy engine
for every connection it opens: every event a run writes, every read, every `has_table`. A new engine has an
empty compiled-statement cache, so each write also compiles its statements again. Profiled on `generate --all`
offline (20 partition runs in one process), creating those engines was 18% of the CPU and `has_table` 4%. This
subclass keeps one engine per storage (still `NullPool`: a fresh sqlite3 connection each time, so threads never
share one) and remembers the tables it has found. Production (PostgreSQL, dagster.yaml) is not affected.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

from dagster._core.storage.event_log import ConsolidatedSqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import NullPool


class OneEngineSqliteEventLogStorage(ConsolidatedSqliteEventLogStorage):
    """`ConsolidatedSqliteEventLogStorage` with one engine and a memory of the tables it has."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._tables_found: set[str] = set()
        super().__init__(base_dir, inst_data)

    @cached_property
    def _engine(self) -> Engine:
        return create_engine(
            self._conn_string, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        )

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self._engine.connect() as connection, connection.begin():
            yield connection

    def has_table(self, table_name: str) -> bool:
        if table_name not in self._tables_found and super().has_table(table_name):
            self._tables_found.add(table_name)  # a table is never dropped while the instance runs
        return table_name in self._tables_found
