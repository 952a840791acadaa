"""Detect, align and embed in a Ray Data actor pool, with the gateway's own `FaceWorker`.

Face ids are stable: `face_id(external_image_id, image_sha256, face_index)` is a hash of
the caller's id for the image, the SHA-256 of its bytes and the face's rank among the
faces detected in it (largest first; detection is deterministic for the same bytes).
The same image listed again (a re-run, a duplicated row) gives the same ids, which the
gateway's AddEmbeddings(skip_existing=True) enrolls once; a different image under the
same external_image_id, or the same photo under another id, gives new ones. The URI is
left out on purpose, so that moving images to another bucket does not re-enroll them.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pyarrow as pa

from cluster.api.limits import DEFAULT_MAX_FACES, MAX_FACES_PER_IMAGE, MAX_S3_IMAGE_BYTES
from jobs.fetch import INVALID_IMAGE, LOW_QUALITY, NO_FACE

logger = logging.getLogger(__name__)

BOX_TYPE = pa.struct([("x", pa.float32()), ("y", pa.float32()), ("width", pa.float32()), ("height", pa.float32())])


def face_type(dimension: int) -> pa.StructType:
    """One face: box and landmarks in pixels of the decoded image (landmarks as x0, y0, … x4, y4)."""
    return pa.struct([
        ("face_id", pa.string()),
        ("face_index", pa.int32()),  # rank among the faces detected in the image, largest first
        ("box", BOX_TYPE),
        ("landmarks", pa.list_(pa.float32(), 10)),
        ("confidence", pa.float32()),
        ("quality", pa.float32()),
        ("embedding", pa.list_(pa.float32(), dimension)),
    ])


def face_id(external_image_id: str, image_sha256: str, face_index: int) -> str:
    """32 hex characters (128 bits) of SHA-256 over the image's id, its content hash and the face's rank."""
    return hashlib.sha256(f"{external_image_id}\0{image_sha256}\0{face_index}".encode()).hexdigest()[:32]


class FaceEmbedder:
    """Ray Data UDF: fetched rows in (`image`, `reason`, …), the faces of each row out, one row per manifest row.

    Rows keep their columns except `image`, and gain `faces` (a list of `face_type`),
    `image_width`, `image_height`, `faces_detected`, `faces_below_quality` and
    `embedding_model`. A row whose image is unusable gets its `reason` instead of faces.

    Args:
        quality_filter: NONE, LOW, AUTO, MEDIUM or HIGH (see cluster/faces/quality.py).
        max_faces: faces detected per image, largest first, 1..1000.
        max_image_bytes: largest image decoded.
        device: torch device, "cuda" or "cpu"; None for CUDA when present.
        batch_size: face crops per forward pass.
        model: the face model to embed with (cluster/faces/models.py); "" for the default.

    Example:
        >>> embedder = FaceEmbedder(quality_filter="AUTO")
        >>> out = embedder(fetched)  # a pyarrow Table from jobs.fetch.fetch_images
        >>> out.column("faces")[0][0]["face_id"]
    """

    def __init__(self, *, quality_filter: str = "AUTO", max_faces: int = DEFAULT_MAX_FACES,
                 max_image_bytes: int = MAX_S3_IMAGE_BYTES, device: str | None = None, batch_size: int = 32,
                 model: str = ""):
        from cluster.faces import quality_filter_threshold
        from cluster.faces.worker import FaceWorker

        if not 1 <= max_faces <= MAX_FACES_PER_IMAGE:
            raise ValueError(f"max_faces must be in [1, {MAX_FACES_PER_IMAGE}], got {max_faces}")
        self.min_quality = quality_filter_threshold(quality_filter)
        self.max_faces = max_faces
        self.max_image_bytes = max_image_bytes
        self.worker = FaceWorker(batch_size=batch_size, device=device, models=(model,))
        self.model = self.worker.ready(model)
        self.type = face_type(self.model.dimension)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        reasons = batch.column("reason").to_pylist()
        messages = batch.column("message").to_pylist()
        todo = [i for i in range(n) if not reasons[i]]
        images = batch.column("image").to_pylist()
        found = self.worker.analyze_many([images[i] for i in todo], max_faces=self.max_faces,
                                         max_bytes=self.max_image_bytes, min_quality=self.min_quality,
                                         model=self.model.name) if todo else []
        ids, hashes = batch.column("external_image_id").to_pylist(), batch.column("image_sha256").to_pylist()
        size = np.zeros((n, 2), np.int32)
        detected, below = np.zeros(n, np.int32), np.zeros(n, np.int32)
        kept: list[list[tuple[int, object]]] = [[] for _ in range(n)]
        for i, result in zip(todo, found):
            if isinstance(result, Exception):
                reasons[i], messages[i] = INVALID_IMAGE, str(result)
                continue
            size[i] = result.width, result.height
            detected[i] = len(result.faces)
            kept[i] = [(j, f) for j, f in enumerate(result.faces) if f.quality >= self.min_quality]
            below[i] = detected[i] - len(kept[i])
            if not result.faces:
                reasons[i], messages[i] = NO_FACE, "no face detected"
            elif not kept[i]:
                best = max(f.quality for f in result.faces)
                reasons[i], messages[i] = LOW_QUALITY, (f"{detected[i]} face(s), best quality {best:.2f}, under "
                                                        f"the quality filter's {self.min_quality}")
        faces = self._faces(kept, ids, hashes)
        return (batch.drop_columns(["image", "reason", "message"])
                .append_column("reason", pa.array(reasons, pa.string()))
                .append_column("message", pa.array(messages, pa.string()))
                .append_column("image_width", pa.array(size[:, 0]))
                .append_column("image_height", pa.array(size[:, 1]))
                .append_column("faces_detected", pa.array(detected))
                .append_column("faces_below_quality", pa.array(below))
                .append_column("embedding_model", pa.array([self.model.name] * n, pa.string()))
                .append_column("faces", faces))

    def _faces(self, kept: list[list[tuple[int, object]]], ids: list[str], hashes: list[str]) -> pa.ListArray:
        """The kept faces of each row as a list array, built column-wise from numpy."""
        flat = [(i, j, f) for i, row in enumerate(kept) for j, f in row]
        d = self.model.dimension
        boxes = np.array([f.box for _, _, f in flat], np.float32).reshape(-1, 4)
        landmarks = np.array([f.landmarks for _, _, f in flat], np.float32).reshape(-1)
        embeddings = np.array([f.embedding for _, _, f in flat], np.float32).reshape(-1)
        fields = list(self.type)
        struct = pa.StructArray.from_arrays([
            pa.array([face_id(ids[i], hashes[i], j) for i, j, _ in flat], pa.string()),
            pa.array([j for _, j, _ in flat], pa.int32()),
            pa.StructArray.from_arrays([pa.array(boxes[:, k]) for k in range(4)], fields=list(BOX_TYPE)),
            pa.FixedSizeListArray.from_arrays(pa.array(landmarks), 10),
            pa.array([f.confidence for _, _, f in flat], pa.float32()),
            pa.array([f.quality for _, _, f in flat], pa.float32()),
            pa.FixedSizeListArray.from_arrays(pa.array(embeddings), d),
        ], fields=fields)
        offsets = np.concatenate([[0], np.cumsum([len(row) for row in kept])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), struct, type=pa.list_(self.type))
