"""The lake: bronze, silver and quarantine files on a local path or `s3://`, through fsspec.

A crash leaves no half-written file under a real name; readers never see partial output. On a
local path every write goes to a temporary name and is renamed into place. On S3 an object appears
whole when its upload completes, so a write is one PUT (a streamed Parquet file over 50 MiB: a
multipart upload, completed or aborted at the end) and never the copy and delete that a rename
costs there.

The plain client; resources.lake holds the Dagster resource over it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, PrivateAttr

S3_CONNECTIONS = 32
"""Requests to S3 in flight at once (botocore's default is 10): a batch of small reads or writes
(a day's clean stamps, an hour's index entries) waits on round trips, not on bandwidth."""
FOOTER_READ_BYTES = 64 * 1024
"""The end of a Parquet file read at once for its footer (a larger footer takes a second read)."""


class _KnownFiles(pafs.FSSpecHandler):
    """An fsspec filesystem under pyarrow that looks each file up once. pyarrow's own handler
    asks S3 about a file three times at every open and range read (HEAD requests; a cleaning
    run opens a bronze file once per row group it decodes), and reads ahead a whole block
    (50 MiB on S3) past every range. Here a file already looked up opens without a request and
    reads exactly the ranges Parquet asks for."""

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        super().__init__(fs)
        self._details: dict[str, dict] = {}

    def open_input_file(self, path):
        if path not in self._details:
            self._details[path] = self.fs.info(path)  # FileNotFoundError when there is none
        details = self._details[path]
        handle = self.fs.open(path, "rb", size=details["size"], cache_type="none")
        handle.details = details  # else each range read looks the file up again
        return pa.PythonFile(handle, mode="r")


Reader = pafs.FileSystem | fsspec.AbstractFileSystem
"""What pyarrow reads the lake through (`Lake.reader`)."""


class LakeUnavailable(RuntimeError):
    """The lake cannot be written; the message says what to fix."""


class Lake(BaseModel):
    """A directory tree of Parquet and JSON files, addressed by paths relative to `url`."""

    url: str
    _fs: Any = PrivateAttr(default=None)
    _root: str = PrivateAttr(default="")

    def _setup(self) -> None:
        if self._fs is None:
            options = {"config_kwargs": {"max_pool_connections": S3_CONNECTIONS}}
            s3 = self.url.startswith("s3://")
            self._fs, self._root = fsspec.core.url_to_fs(self.url, **(options if s3 else {}))
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
        """Names directly under `relative`, sorted; empty when it does not exist. Never from a
        cache: s3fs keeps listings forever by default, and a long-lived sensor must see the
        manifests that other processes wrote since."""
        full = self.path(relative)
        self.fs.invalidate_cache(full)
        try:
            found = self.fs.ls(full, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)

    def list_nested(self, relative: str, prefix: str) -> list[tuple[str, str]]:
        """(directory, name) of each file in the directories directly under `relative` whose
        names start with `prefix`, sorted: on S3 one listing of them all (a request a thousand
        keys), where `list` takes a request a directory. Never from a cache."""
        full = self.path(relative)
        if not self.local:
            # A prefixed find lists without a delimiter and fills no listing cache.
            keys = (key[len(full) + 1 :].split("/") for key in self.fs.find(full, prefix=prefix))
            return sorted((parts[0], parts[1]) for parts in keys if len(parts) == 2)
        try:
            directories = [d for d in os.listdir(full) if d.startswith(prefix)]
        except FileNotFoundError:
            return []
        found = []
        for directory in directories:
            try:
                found += [(directory, name) for name in os.listdir(f"{full}/{directory}")]
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed meanwhile, or a file
        return sorted(found)

    @property
    def local(self) -> bool:
        """A local path (else an object store, where every read and write is a round trip)."""
        return isinstance(self.fs, LocalFileSystem)

    def _commit(self, temporary: str, final: str, *, exclusive: bool = False) -> bool:
        """Move the local file `temporary` into place; with `exclusive`, only if nothing is
        there yet (False, and the temporary removed, when something is)."""
        if not exclusive:
            os.replace(temporary, final)
            return True
        try:
            os.link(temporary, final)  # atomic create-if-absent
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)

    def _temporary(self, relative: str) -> tuple[str, str]:
        final = self.path(relative)
        directory, name = final.rsplit("/", 1)
        os.makedirs(directory, exist_ok=True)
        return f"{directory}/.{name}.{uuid.uuid4().hex}.tmp", final

    def write_bytes(self, relative: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Write `data` whole or not at all; with `exclusive`, only where nothing is yet
        (returns False when something was there)."""
        if not self.local:
            try:
                # One PUT; exclusive: a conditional one (If-None-Match).
                self.fs.pipe_file(
                    self.path(relative), data, mode="create" if exclusive else "overwrite"
                )
            except (FileExistsError, OSError) as error:
                if exclusive and (
                    "PreconditionFailed" in str(error) or isinstance(error, FileExistsError)
                ):
                    return False
                raise
            return True
        temporary, final = self._temporary(relative)
        with open(temporary, "wb") as handle:
            handle.write(data)
        return self._commit(temporary, final, exclusive=exclusive)

    def write_files(self, files: dict[str, bytes]) -> None:
        """Write small files, each whole or not at all; on S3 in concurrent PUTs."""
        if self.local:
            for relative, data in files.items():
                self.write_bytes(relative, data)
        elif files:
            self.fs.pipe({self.path(relative): data for relative, data in files.items()})

    def write_json(self, relative: str, obj: Any, *, exclusive: bool = False) -> bool:
        # orjson: the standard library's encoder is Python code when it indents, and a day's
        # landing wrote its manifests and partial results in 0.75 CPU-s of it.
        data = orjson.dumps(
            obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        )
        return self.write_bytes(relative, data, exclusive=exclusive)

    def footers(self, relatives: list[str]) -> list[pq.FileMetaData | None]:
        """Parquet files' footers (no data read), None where there is no file. Each is read
        from its file's end without asking its size first (on S3 a GET of a suffix range, no
        HEAD), and all at once: on S3 concurrent GETs, one round trip where one a file would
        cost as many (a footer over `FOOTER_READ_BYTES` takes a second read)."""
        paths = [self.path(relative) for relative in relatives]
        tails = self._tails(paths, [FOOTER_READ_BYTES] * len(paths))
        # A file ends with its footer's length (4 bytes, little-endian) and "PAR1".
        needed = {i: int.from_bytes(t[-8:-4], "little") + 8 for i, t in enumerate(tails) if t}
        short = [i for i, n in needed.items() if n > len(tails[i])]
        longer = self._tails([paths[i] for i in short], [needed[i] for i in short])
        for i, tail in zip(short, longer, strict=True):
            tails[i] = tail
        return [None if t is None else pq.read_metadata(pa.BufferReader(t)) for t in tails]

    def _tails(self, paths: list[str], lengths: list[int]) -> list[bytes | None]:
        """The last `lengths` bytes of each file (whole when shorter), None where none is."""
        if not paths:
            return []
        read = self.fs.cat_ranges(paths, [-n for n in lengths], None, on_error="return")
        for outcome in read:
            if isinstance(outcome, Exception) and not isinstance(outcome, FileNotFoundError):
                raise outcome
        return [None if isinstance(outcome, Exception) else outcome for outcome in read]

    def footers_metadata(self, relatives: list[str]) -> list[dict[bytes, bytes] | None]:
        """Parquet files' key-value footer metadata (`footers`), None where there is no file."""
        return [None if f is None else f.metadata or {} for f in self.footers(relatives)]

    def read_json(self, relative: str) -> Any:
        return self.read_jsons([relative])[0]

    def read_jsons(self, relatives: list[str]) -> list[Any]:
        """JSON files, read at once (on S3 concurrent GETs: one round trip). Each is asked for
        as a range from 0: asked for a whole file, s3fs would look its size up first (a HEAD)."""
        paths = [self.path(relative) for relative in relatives]
        read = self.fs.cat_ranges(paths, 0, None, on_error="raise") if paths else []
        return [orjson.loads(data) for data in read]

    @contextmanager
    def parquet_writer(
        self,
        relative: str,
        schema: pa.Schema,
        *,
        keep: Callable[[], bool] = lambda: True,
        statistics: list[str] | None = None,
        dictionary: list[str] | None = None,
        encoding: dict[str, str] | None = None,
    ) -> Iterator[pq.ParquetWriter]:
        """A streaming Parquet writer whose file appears under `relative` only on success, and
        only if `keep()` still says so then (checked just before the rename, or before the
        upload completes). `statistics` names the columns readers filter on (all when None):
        min/max of the others, such as random ids and raw values, cost time to write and prune
        nothing. `dictionary` names the columns worth dictionary encoding (all when None),
        `encoding` another encoding for some of the others (Parquet's names, as pyarrow takes
        them)."""
        temporary = final = ""
        if self.local:
            temporary, final = self._temporary(relative)
            handle = pa.OSFile(temporary, "wb")  # Arrow's own file: no Python per page
        else:
            # Uploaded when closed: a file under a block (50 MiB) in one PUT, a larger one as a
            # multipart upload that only the close completes; discard() drops either.
            handle = self.fs.open(self.path(relative), "wb")
        writer = pq.ParquetWriter(
            handle,
            schema,
            compression="zstd",
            write_statistics=statistics or True,
            use_dictionary=dictionary or True,
            column_encoding=encoding,
        )

        def finish(kept: bool) -> None:
            if self.local:
                handle.close()
                if kept:
                    self._commit(temporary, final)
                else:
                    os.unlink(temporary)
            elif kept:
                handle.close()
            else:
                handle.discard()
                handle.closed = True  # else closing it, even on collection, would upload it

        try:
            yield writer
            writer.close()
        except BaseException:
            writer.close()
            finish(False)
            raise
        finish(keep())

    def write_parquet(self, relative: str, table: pa.Table) -> None:
        with self.parquet_writer(relative, table.schema) as writer:
            writer.write_table(table, row_group_size=256 * 1024)

    def read_parquet(
        self,
        relatives: list[str],
        *,
        columns: list[str] | None = None,
        filters=None,
        schema: pa.Schema | None = None,
    ) -> pa.Table:
        """Read files; row-group statistics skip what `filters` excludes. With `schema`, a
        column that an older file lacks reads as nulls."""
        return pq.read_table(
            [self.path(r) for r in relatives],
            filesystem=self.reader(),
            columns=columns,
            filters=filters,
            schema=schema,
        )

    def dataset(
        self, relatives: list[str], schema: pa.Schema, reader: Reader | None = None
    ) -> ds.Dataset:
        """Files as one Arrow dataset of `schema`, for streaming scans (a column an older file
        lacks reads as nulls); through `reader` (`Lake.reader`) when given, so that datasets of
        the same files share its lookups."""
        return ds.dataset(
            [self.path(r) for r in relatives],
            schema=schema,
            format="parquet",
            filesystem=reader or self.reader(),
        )

    def reader(self) -> Reader:
        """The filesystem pyarrow reads through: Arrow's own for a local path; on S3, fsspec's,
        each file looked up once for as long as the reader is used (by a read, a dataset, or a
        cleaning run for its bronze, which does not change meanwhile)."""
        return self.fs if self.local else pafs.PyFileSystem(_KnownFiles(self.fs))

    def remove(self, relative: str) -> None:
        full = self.path(relative)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)
