"""An enrollment job's output store: each chunk's faces and errors, and its commit record.

Layout under `{output}/{collection}/`, one object of each kind per chunk of the image
manifests (see jobs/image_manifests.py), named by the chunk's key:

    segments/{key}.parquet   one row per face found (FACE columns below)
    errors/{key}.parquet     one row per manifest row that enrolled nothing (ERROR columns)
    state/{key}.json         the commit record, written once the chunk's faces are in the collection

(`segments/` keeps its name so that the output's layout stays as earlier runs wrote it; there it
means a chunk's faces, not the gateway's segments of cluster/storage/manifest.py.) The commit
record is the commit point: a chunk without one is redone by the next run, which rewrites the same two
objects (object puts are atomic) and commits its faces again with skip_existing, so an
interrupted commit costs nothing twice.
"""

from __future__ import annotations

import io
import json
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.storage.object_store import ObjectStore

# Per face: the manifest row's columns, then the face.
ROW_COLUMNS = ["external_image_id", "image_uri", "person_id", "metadata", "manifest", "manifest_row", "image_sha256",
               "image_width", "image_height", "embedding_model"]
FACE_FIELDS = ["face_index", "box", "landmarks", "confidence", "quality", "embedding"]
ERROR_COLUMNS = ["manifest", "manifest_row", "image_uri", "external_image_id", "person_id", "reason", "message"]


def chunk_faces(rows: pa.Table) -> pa.Table:
    """One row per face of the embedded rows: face_id, ROW_COLUMNS, FACE_FIELDS."""
    faces = rows.column("faces")
    flat = pc.list_flatten(faces)
    base = rows.select(ROW_COLUMNS).take(pc.list_parent_indices(faces))
    columns = {"face_id": pc.struct_field(flat, "face_id")}
    columns.update({c: base.column(c) for c in ROW_COLUMNS})
    columns.update({f: pc.struct_field(flat, f) for f in FACE_FIELDS})
    return pa.table(columns)


def chunk_errors(rows: pa.Table) -> pa.Table:
    """The rows that failed, with their reason and message."""
    return rows.filter(pc.not_equal(rows.column("reason"), "")).select(ERROR_COLUMNS)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


class JobState:
    """The chunks' faces, errors and commit records of one collection's enrollments under an output root.

    Args:
        store: the job's output store, rooted at `{output}/{collection}`.

    Example:
        >>> state = JobState(ObjectStore("s3://bucket/enroll/staff"))
        >>> done = state.committed()
        >>> state.write(key, rows); ...; state.commit(key, {"faces": 3})
    """

    def __init__(self, store: ObjectStore):
        self.store = store

    @staticmethod
    def faces_key(key: str) -> str:
        return f"segments/{key}.parquet"

    @staticmethod
    def errors_key(key: str) -> str:
        return f"errors/{key}.parquet"

    def committed(self) -> set[str]:
        """Keys of the chunks committed by earlier runs (one listing, no reads)."""
        return {k[len("state/"):-len(".json")] for k in self.store.list("state/") if k.endswith(".json")}

    def write(self, key: str, rows: pa.Table) -> tuple[pa.Table, pa.Table]:
        """Writes the chunk's faces and errors (each only when there are some); returns both tables."""
        faces, errors = chunk_faces(rows), chunk_errors(rows)
        if faces.num_rows:
            self.store.put(self.faces_key(key), _parquet(faces))
        if errors.num_rows:
            self.store.put(self.errors_key(key), _parquet(errors))
        return faces, errors

    def commit(self, key: str, record: dict) -> None:
        """Writes the chunk's commit record; after this a re-run skips the chunk."""
        # "segment" names the chunk's key in records, as earlier runs wrote them.
        self.store.put(f"state/{key}.json", json.dumps({**record, "segment": key, "committed_at": time.time()},
                                                       sort_keys=True).encode())
