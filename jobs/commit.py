"""Committing a chunk's faces to the serving cluster through AddEmbeddings(skip_existing=True).

skip_existing makes every batch idempotent: faces already in the collection (from an
earlier, interrupted run, or a duplicated manifest row) are skipped and counted, so a
batch that failed half-way, or whose answer was lost, is simply sent again.
"""

from __future__ import annotations

import logging
import os
import time

import grpc
import numpy as np
import pyarrow as pa
from gallery.v1 import gallery_pb2 as pb

from cluster.api import convert
from cluster.api.limits import MAX_FACES_PER_ADD
from cluster.client import GalleryClient

logger = logging.getLogger(__name__)

TOKEN_ENV_VAR = "GALLERY_AUTH_TOKEN"
RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def gateway_client(gateway: str, *, timeout_s: float = 120.0) -> GalleryClient:
    """A client of the gateway that sends the bearer token in $GALLERY_AUTH_TOKEN, when set.

    The token comes from the environment, never from a flag, so that it stays out of process
    lists and of the job's entrypoint in `ray job list`.
    """
    token = os.environ.get(TOKEN_ENV_VAR, "")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    return GalleryClient(gateway, timeout_s=timeout_s, metadata=metadata)


def new_faces(faces: pa.Table) -> list[pb.NewFace]:
    """NewFace messages for the faces of a chunk (see jobs/job_state.py).

    Metadata: the manifest's extra columns, `person_id` when given, and the source row as
    `source_manifest` (the file's URI) and `source_row`. Box and landmarks become ratios of
    the image size, as FaceDetail has them.
    """
    n = faces.num_rows
    if not n:
        return []
    d = faces.schema.field("embedding").type.list_size
    xb = np.asarray(faces.column("embedding").combine_chunks().flatten(), dtype="<f4").reshape(n, d)
    landmarks = np.asarray(faces.column("landmarks").combine_chunks().flatten(), np.float32).reshape(n, 5, 2)
    rows = faces.drop_columns(["embedding", "landmarks"]).to_pylist()
    out = []
    for i, row in enumerate(rows):
        box = row["box"]
        detail = convert.face_detail((box["x"], box["y"], box["width"], box["height"]), landmarks[i],
                                     row["confidence"], row["quality"], float(row["image_width"]),
                                     float(row["image_height"]))
        metadata = dict(row["metadata"] or [])
        if row["person_id"]:
            metadata["person_id"] = row["person_id"]
        metadata.update(source_manifest=row["manifest"], source_row=str(row["manifest_row"]))
        out.append(convert.new_face(row["face_id"], xb[i], external_image_id=row["external_image_id"],
                                    image_uri=row["image_uri"], metadata=metadata, detail=detail))
    return out


def add_faces(client: GalleryClient, collection_id: str, faces: list[pb.NewFace], *, batch_faces: int = 1000,
              retries: int = 5, backoff_s: float = 1.0) -> tuple[int, int]:
    """Adds faces in batches, retrying UNAVAILABLE and DEADLINE_EXCEEDED; returns (added, already there).

    Raises:
        ValueError: batch_faces outside [1, 10000].
        grpc.RpcError: any other status, or the same one after `retries` retries.
    """
    if not 1 <= batch_faces <= MAX_FACES_PER_ADD:
        raise ValueError(f"batch_faces must be in [1, {MAX_FACES_PER_ADD}], got {batch_faces}")
    added = skipped = 0
    for start in range(0, len(faces), batch_faces):
        batch = faces[start:start + batch_faces]
        for attempt in range(retries + 1):
            try:
                response = client.add_faces(collection_id, batch, skip_existing=True)
                break
            except grpc.RpcError as e:
                if e.code() not in RETRIED or attempt == retries:
                    raise
                logger.warning("AddEmbeddings to %s: %s, retrying", collection_id, e.code().name)
                time.sleep(backoff_s * 2**attempt)
        added += len(response.face_ids)
        skipped += len(response.skipped_face_ids)
    return added, skipped
