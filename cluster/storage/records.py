"""Face records as shards hold them, and their Parquet form in the object store."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class FaceRecord:
    """One enrolled face, without its vector."""

    face_id: str
    external_image_id: str = ""
    image_uri: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    detail: bytes = b""  # serialized gallery.v1.FaceDetail, empty when not from an image
    embedding: np.ndarray | None = None  # set only when asked for

    def __reduce__(self):
        # Shards send a batch's records to the gateway pickled: as constructor arguments they pickle
        # and unpickle faster and smaller than the default's instance dict (benchmarks/README.md).
        return FaceRecord, (self.face_id, self.external_image_id, self.image_uri, self.metadata, self.detail,
                            self.embedding)


@dataclass
class FaceBatch:
    """Faces with their normalised fp16 vectors, column-wise; `positions` are slots in a partition."""

    records: list[FaceRecord]
    vectors: np.ndarray  # (n, d) float16
    positions: np.ndarray | None = None  # (n,) int64

    def __len__(self) -> int:
        return len(self.records)

    def take(self, rows: np.ndarray | list[int]) -> FaceBatch:
        rows = np.asarray(rows, dtype=np.int64)
        positions = None if self.positions is None else self.positions[rows]
        return FaceBatch([self.records[i] for i in rows], self.vectors[rows], positions)


# zstd for the records; fp16 embeddings barely compress (zstd saved 8% of their bytes at twice the time to
# write a snapshot, 65k faces at 512-d), and a compaction rewrites millions of them.
_COMPRESSION = {"position": "zstd", "face_id": "zstd", "external_image_id": "zstd", "image_uri": "zstd",
                "metadata.key_value.key": "zstd", "metadata.key_value.value": "zstd", "detail": "zstd",
                "vector": "none"}  # by leaf column: the map's are its keys and values


def _schema(dimension: int) -> pa.Schema:
    return pa.schema([
        ("position", pa.int64()),
        ("face_id", pa.string()),
        ("external_image_id", pa.string()),
        ("image_uri", pa.string()),
        ("metadata", pa.map_(pa.string(), pa.string())),
        ("detail", pa.binary()),
        ("vector", pa.binary(2 * dimension)),  # fp16, little-endian
    ])


def rows_table(positions: np.ndarray, columns: dict[str, pa.Array | list], vectors: np.ndarray) -> pa.Table:
    """Positioned faces as a segment's or snapshot's rows: the record columns (face_id, external_image_id,
    image_uri, metadata, detail) as `FaceTable.columns` gives them, and the fp16 vectors."""
    n, d = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype="<f2")
    return pa.table({
        "position": pa.array(positions, pa.int64()), **columns,
        "vector": pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * d), n, [None, pa.py_buffer(vectors.tobytes())]),
    }, schema=_schema(d))


def batch_table(batch: FaceBatch) -> pa.Table:
    """A positioned batch as a segment's or snapshot's rows (`rows_table`)."""
    return rows_table(batch.positions, {
        "face_id": [r.face_id for r in batch.records],
        "external_image_id": [r.external_image_id for r in batch.records],
        "image_uri": [r.image_uri for r in batch.records],
        "metadata": pa.array([list(r.metadata.items()) for r in batch.records], pa.map_(pa.string(), pa.string())),
        "detail": pa.array([r.detail for r in batch.records], pa.binary()),
    }, batch.vectors)


def batch_to_parquet(batch: FaceBatch) -> bytes:
    """Serialises a positioned batch (an add segment)."""
    sink = io.BytesIO()
    pq.write_table(batch_table(batch), sink, compression=_COMPRESSION)
    return sink.getvalue()


def write_tables(path: str, tables: Iterable[pa.Table], dimension: int) -> None:
    """Writes tables of positioned faces (`rows_table`) to one Parquet file, a row group each (a snapshot: a
    whole partition, which is never held in memory at once)."""
    with pq.ParquetWriter(path, _schema(dimension), compression=_COMPRESSION) as writer:
        for rows in tables:
            if rows.num_rows:
                writer.write_table(rows)


def read_batches(source: pa.NativeFile, dimension: int, rows: int = 65_536) -> Iterator[FaceBatch]:
    """The positioned batches of a Parquet file (random access: a local file or a ranged S3 reader),
    `rows` faces at a time."""
    for record_batch in pq.ParquetFile(source).iter_batches(batch_size=rows):
        yield _batch(pa.Table.from_batches([record_batch]), dimension)


def batch_from_parquet(data: bytes, dimension: int) -> FaceBatch:
    return _batch(pq.read_table(io.BytesIO(data)), dimension)


def _batch(table: pa.Table, dimension: int) -> FaceBatch:
    n = table.num_rows
    vector_column = table.column("vector").combine_chunks()
    if n:
        raw = np.frombuffer(vector_column.buffers()[1], dtype="<f2", count=n * dimension,
                            offset=vector_column.offset * 2 * dimension)
        vectors = raw.reshape(n, dimension).astype(np.float16)
    else:
        vectors = np.empty((0, dimension), dtype=np.float16)
    columns = {name: table.column(name).to_pylist() for name in
               ("face_id", "external_image_id", "image_uri", "metadata", "detail")}
    records = [FaceRecord(face_id, external_image_id, image_uri, dict(metadata or []), detail or b"")
               for face_id, external_image_id, image_uri, metadata, detail in
               zip(*(columns[c] for c in ("face_id", "external_image_id", "image_uri", "metadata", "detail")))]
    positions = table.column("position").to_numpy().astype(np.int64)
    return FaceBatch(records, vectors, positions)


def ids_to_parquet(face_ids: list[str]) -> bytes:
    """Serialises a delete segment."""
    sink = io.BytesIO()
    pq.write_table(pa.table({"face_id": pa.array(face_ids, pa.string())}), sink)
    return sink.getvalue()


def ids_from_parquet(data: bytes) -> list[str]:
    return pq.read_table(io.BytesIO(data)).column("face_id").to_pylist()
