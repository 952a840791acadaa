"""Image manifests, the jobs' input: Parquet files listing gallery images, split into chunks of consecutive rows.

(Not a collection's manifest, cluster/storage/manifest.py, which is the gateway's record of a collection.)
An image manifest has at least `image_uri` (s3://… or a path; relative paths are relative
to the manifest's folder) and `external_image_id`; `person_id` and any other
columns are optional and travel with the faces as metadata (as strings).

A *chunk* is up to `rows_per_chunk` consecutive rows of one row group of one
manifest file. It is the job's unit of work, committed, recorded and skipped on a
re-run; its key names the file (URI and size), and the row range, so a manifest
file that is rewritten becomes new chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.storage import filesystem, resolve, uri_of

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image_uri", "external_image_id")
ROW_SCHEMA = pa.schema([
    ("chunk", pa.string()),
    ("chunk_rows", pa.int32()),
    ("manifest", pa.string()),  # URI of the manifest file
    ("manifest_row", pa.int64()),  # row number in that file, from 0
    ("image_uri", pa.string()),
    ("external_image_id", pa.string()),
    ("person_id", pa.string()),
    ("metadata", pa.map_(pa.string(), pa.string())),  # the other columns, as strings
])


@dataclass(frozen=True)
class Chunk:
    """Rows [start, stop) of a manifest file, all in row group `row_group`, which starts at row `group_start`."""

    key: str
    manifest: str
    row_group: int
    group_start: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def chunk_key(manifest: str, size_bytes: int, start: int, stop: int) -> str:
    """`<16 hex of the file's URI and size>-<start>-<stop>`: stable across runs, new for a rewritten file."""
    file_id = hashlib.sha256(f"{manifest}\0{size_bytes}".encode()).hexdigest()[:16]
    return f"{file_id}-{start:010d}-{stop:010d}"


def list_manifests(manifest: str, s3_endpoint: str = "") -> list[str]:
    """URIs of the Parquet files of a manifest: the file itself, or every *.parquet under a folder/prefix, sorted.

    Raises:
        FileNotFoundError: nothing there, or a folder without Parquet files.
    """
    fs, path = filesystem(manifest, s3_endpoint)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [uri_of(fs, path)]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"manifest {manifest!r}: no such file, folder or prefix")
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True))
                   if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise FileNotFoundError(f"manifest {manifest!r}: no .parquet files under it")
    return [uri_of(fs, f) for f in files]


def _plan_file(uri: str, rows_per_chunk: int, s3_endpoint: str) -> list[Chunk]:
    fs, path = filesystem(uri, s3_endpoint)
    size = fs.get_file_info(path).size
    with fs.open_input_file(path) as f:
        metadata = pq.ParquetFile(f).metadata
    missing = [c for c in REQUIRED_COLUMNS if c not in metadata.schema.names]
    if missing:
        raise ValueError(f"manifest {uri}: missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}")
    chunks, group_start = [], 0
    for g in range(metadata.num_row_groups):
        group_rows = metadata.row_group(g).num_rows
        for start in range(group_start, group_start + group_rows, rows_per_chunk):
            stop = min(start + rows_per_chunk, group_start + group_rows)
            chunks.append(Chunk(chunk_key(uri, size, start, stop), uri, g, group_start, start, stop))
        group_start += group_rows
    return chunks


def plan_chunks(manifest: str, rows_per_chunk: int, s3_endpoint: str = "", threads: int = 16) -> list[Chunk]:
    """Every chunk of every file of a manifest, in file and row order (reads only the Parquet footers).

    Raises:
        ValueError: rows_per_chunk < 1, or a file without the required columns.
        FileNotFoundError: no manifest there.
    """
    if rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be >= 1, got {rows_per_chunk}")
    files = list_manifests(manifest, s3_endpoint)
    with ThreadPoolExecutor(min(threads, len(files))) as pool:
        planned = pool.map(lambda uri: _plan_file(uri, rows_per_chunk, s3_endpoint), files)
        return [c for chunks in planned for c in chunks]


def read_tasks(chunks: list[Chunk]) -> list[dict]:
    """One read task per row group holding pending chunks: what `read_rows` gets, one row each."""
    groups: dict[tuple[str, int], list[Chunk]] = {}
    for c in chunks:
        groups.setdefault((c.manifest, c.row_group), []).append(c)
    return [{"manifest": manifest, "row_group": g, "group_start": group[0].group_start,
             "chunks": json.dumps([[c.key, c.start, c.stop] for c in group])}
            for (manifest, g), group in groups.items()]


def _as_strings(column: pa.ChunkedArray) -> list[str | None]:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.to_pylist()
    try:
        return pc.cast(column, pa.string()).to_pylist()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()]


def read_rows(batch: pa.Table, *, s3_endpoint: str = "") -> pa.Table:
    """Ray Data UDF: read tasks (see `read_tasks`) in, the rows of their chunks out, as ROW_SCHEMA."""
    out = []
    for task in batch.to_pylist():
        fs, path = filesystem(task["manifest"], s3_endpoint)
        with fs.open_input_file(path) as f:
            group = pq.ParquetFile(f).read_row_group(task["row_group"])
        for key, start, stop in json.loads(task["chunks"]):
            rows = group.slice(start - task["group_start"], stop - start)
            out.append(_rows_table(rows, key, task["manifest"], start))
    return pa.concat_tables(out) if out else ROW_SCHEMA.empty_table()


def _rows_table(rows: pa.Table, key: str, manifest: str, start: int) -> pa.Table:
    n = rows.num_rows
    extra = [c for c in rows.column_names if c not in (*REQUIRED_COLUMNS, "person_id")]
    values = {c: _as_strings(rows.column(c)) for c in extra}
    metadata = [[(c, values[c][i]) for c in extra if values[c][i] is not None] for i in range(n)]
    uris = [resolve(u or "", manifest) for u in _as_strings(rows.column("image_uri"))]
    person = _as_strings(rows.column("person_id")) if "person_id" in rows.column_names else [None] * n
    return pa.table({
        "chunk": pa.array([key] * n, pa.string()),
        "chunk_rows": pa.array([n] * n, pa.int32()),
        "manifest": pa.array([manifest] * n, pa.string()),
        "manifest_row": pa.array(range(start, start + n), pa.int64()),
        "image_uri": pa.array(uris, pa.string()),
        "external_image_id": pa.array([v or "" for v in _as_strings(rows.column("external_image_id"))], pa.string()),
        "person_id": pa.array([v or "" for v in person], pa.string()),
        "metadata": pa.array(metadata, ROW_SCHEMA.field("metadata").type),
    }, schema=ROW_SCHEMA)
