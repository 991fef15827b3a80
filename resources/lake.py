"""The lake: bronze, silver and quarantine files on a local path or `s3://`, through fsspec.

Every write goes to a temporary name and is renamed into place, so a crash leaves no half-written
file under a real name; readers never see partial output.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import ConfigurableResource
from pydantic import PrivateAttr


class LakeUnavailable(RuntimeError):
    """The lake cannot be written; the message says what to fix."""


class LakeResource(ConfigurableResource):
    """A directory tree of Parquet and JSON files, addressed by paths relative to `url`."""

    url: str
    _fs: Any = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")

    def _setup(self) -> None:
        if self._fs is None:
            self._fs, self._root = fsspec.core.url_to_fs(self.url)
            self._root = self._root.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        self._setup()
        return self._fs

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` (no protocol), for fsspec and pyarrow."""
        self._setup()
        return f"{self._root}/{relative}"

    def uri(self, relative: str) -> str:
        """`relative` as a URL that DuckDB and dbt can read (protocol included for s3)."""
        return f"{self.url.rstrip('/')}/{relative}"

    def check_writable(self) -> None:
        """Fail fast, before any partial output, when the lake cannot be written."""
        probe = f"_probe/{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.fs.rm(self.path(probe))
        except Exception as error:  # noqa: BLE001 - any failure means the same fix
            raise LakeUnavailable(
                f"cannot write to the lake at {self.url} ({type(error).__name__}: {error}): "
                "set CLICKSTREAM_LAKE_URL to a writable path or s3://bucket/prefix"
            ) from None

    def exists(self, relative: str) -> bool:
        return self.fs.exists(self.path(relative))

    def list(self, relative: str) -> list[str]:
        """Names directly under `relative`, sorted; empty when it does not exist."""
        full = self.path(relative)
        if not self.fs.exists(full):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(full, detail=False))

    def _commit(self, temporary: str, final: str) -> None:
        self.fs.mv(temporary, final)

    def _temporary(self, relative: str) -> tuple[str, str]:
        final = self.path(relative)
        directory, name = final.rsplit("/", 1)
        self.fs.makedirs(directory, exist_ok=True)
        return f"{directory}/.{name}.{uuid.uuid4().hex}.tmp", final

    def write_bytes(self, relative: str, data: bytes) -> None:
        temporary, final = self._temporary(relative)
        with self.fs.open(temporary, "wb") as handle:
            handle.write(data)
        self._commit(temporary, final)

    def write_json(self, relative: str, obj: Any) -> None:
        self.write_bytes(relative, json.dumps(obj, indent=1, sort_keys=True).encode())

    def read_json(self, relative: str) -> Any:
        with self.fs.open(self.path(relative), "rb") as handle:
            return json.load(handle)

    @contextmanager
    def parquet_writer(self, relative: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
        """A streaming Parquet writer whose file appears under `relative` only on success."""
        temporary, final = self._temporary(relative)
        handle = self.fs.open(temporary, "wb")
        writer = pq.ParquetWriter(handle, schema, compression="zstd")
        try:
            yield writer
            writer.close()
            handle.close()
        except BaseException:
            writer.close()
            handle.close()
            self.fs.rm(temporary)
            raise
        self._commit(temporary, final)

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        with self.parquet_writer(relative, table.schema) as writer:
            writer.write_table(table, row_group_size=256 * 1024)

    def read_parquet(
        self, relatives: list[str], *, columns: list[str] | None = None, filters=None
    ) -> pa.Table:
        """Read files; row-group statistics skip what `filters` excludes."""
        return pq.read_table(
            [self.path(r) for r in relatives],
            filesystem=self.fs,
            columns=columns,
            filters=filters,
        )

    def remove(self, relative: str) -> None:
        full = self.path(relative)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)
