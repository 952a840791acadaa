"""Re-embedding: moves a face collection to another face model, as a new collection with the same faces.

    python -m jobs.reembed --source staff --target staff-sface --output s3://bucket/reembed/ \\
        --gateway 127.0.0.1:50051 [--embedding-model sface] [--s3-endpoint http://127.0.0.1:9000]

A collection's model and alignment template are fixed at its creation (cluster/faces/models.py), so
moving to another model means a new collection. Every face of the source keeps its face id, external
image id, image URI, metadata and FaceDetail; only its embedding is new: the image is read again from
the URI it was enrolled from and the face is aligned on its *recorded* landmarks with the new model's
template, so that the target holds exactly the source's faces, whatever the detector would find today.

That needs each face's `image_uri`: enrollment jobs (jobs/enroll.py) record it for every face, and
IndexFaces does for images given as an S3 object. Faces without one (IndexFaces with image bytes) or
whose image can no longer be read are not moved; the job counts them by reason and writes them to
`errors/<chunk>.parquet`.

Resumable and idempotent like enrollment: the source's face ids, sorted, are cut into chunks of
`faces_per_chunk`; a chunk's key hashes its ids, and `state/<chunk>.json` (jobs/job_state.py) is written
once its faces are in the target, with AddEmbeddings(skip_existing=True). A re-run lists the source again
and redoes only chunks without a record; faces added since make new chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from gallery.v1 import gallery_pb2 as pb

from cluster.api import convert, flags
from cluster.api.limits import MAX_FACES_PER_ADD, MAX_S3_IMAGE_BYTES
from cluster.client import GalleryClient
from cluster.storage.manifest import check_collection_id
from cluster.storage.object_store import ObjectStore
from jobs.commit import add_faces, gateway_client
from jobs.fetch import INVALID_IMAGE, read_image
from jobs.job_state import JobState
from jobs.progress import timed

logger = logging.getLogger(__name__)

NO_IMAGE_URI = "no_image_uri"  # enrolled from image bytes: nothing to read the face from again
NO_LANDMARKS = "no_landmarks"  # a raw embedding without a FaceDetail
PAGE_FACES = 4096  # ListFaces' largest page


@dataclass
class ReembedSummary:
    """What a run did. Counts are this run's; chunks committed by earlier runs are not redone."""

    source: str
    target: str
    embedding_model: str = ""
    faces_in_source: int = 0
    faces_already_committed: int = 0  # in chunks earlier runs committed
    chunks_committed: int = 0
    faces_reembedded: int = 0  # added to the target
    faces_already_there: int = 0  # the target had them (an interrupted run)
    faces_failed: dict[str, int] = field(default_factory=dict)  # by reason
    elapsed_s: float = 0.0
    faces_per_s: float = 0.0


def chunk_key(face_ids: list[str]) -> str:
    """`<16 hex of the chunk's sorted face ids>-<count>`: the same faces make the same chunk in every run."""
    return f"{hashlib.sha256(chr(0).join(face_ids).encode()).hexdigest()[:16]}-{len(face_ids):06d}"


def list_source(client: GalleryClient, collection_id: str) -> list[pb.Face]:
    """Every face of a collection (records and details, no embeddings), sorted by face id."""
    faces, token = [], ""
    while True:
        page = client.list_faces(collection_id, PAGE_FACES, token)
        faces += page.faces
        token = page.next_token
        if not token:
            return sorted(faces, key=lambda f: f.face_id)


def _open_target(client: GalleryClient, source: pb.CollectionDescription, target: str,
                 embedding_model: str) -> pb.CollectionDescription:
    try:
        description = client.describe(target)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        logger.info("creating collection %s (model %s)", target, embedding_model or "the default")
        try:
            description = client.create_collection(target, embedding_model=embedding_model,
                                                   train_threshold=source.train_threshold)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:  # another run created it meanwhile
                raise
            description = client.describe(target)
    if not description.embedding_model:
        raise ValueError(f"target {target!r} is a collection of raw embeddings; re-embedding needs a face collection")
    if embedding_model and description.embedding_model != embedding_model:
        raise ValueError(f"target {target!r} holds {description.embedding_model} embeddings, not {embedding_model}")
    return description


def _landmarks(face: pb.Face) -> np.ndarray | None:
    """The face's 5 landmarks as ratios of its image's size, or None without a FaceDetail."""
    marks = face.detail.landmarks
    return np.array([[m.x, m.y] for m in marks], np.float32) if len(marks) == 5 else None


def _errors_parquet(failed: list[tuple[pb.Face, str, str]]) -> bytes:
    table = pa.table({"face_id": [f.face_id for f, _, _ in failed],
                      "external_image_id": [f.external_image_id for f, _, _ in failed],
                      "image_uri": [f.image_uri for f, _, _ in failed],
                      "reason": [r for _, r, _ in failed], "message": [m for _, _, m in failed]})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


class _Chunker:
    """Re-embeds one chunk of faces: reads each image once, embeds all its faces in one call."""

    def __init__(self, worker, model: str, s3_endpoint: str, max_image_bytes: int, fetch_threads: int):
        self.worker, self.model = worker, model
        self.s3_endpoint, self.max_image_bytes = s3_endpoint, max_image_bytes
        self.pool = ThreadPoolExecutor(fetch_threads)

    def __call__(self, faces: list[pb.Face]) -> tuple[list[pb.NewFace], list[tuple[pb.Face, str, str]]]:
        from cluster.faces import InvalidImageError

        failed, by_image = [], {}
        for face in faces:
            landmarks = _landmarks(face)
            if not face.image_uri:
                failed.append((face, NO_IMAGE_URI, "enrolled without an image URI (image bytes)"))
            elif landmarks is None:
                failed.append((face, NO_LANDMARKS, "no FaceDetail landmarks to align on"))
            else:
                by_image.setdefault(face.image_uri, []).append((face, landmarks))
        reads = self.pool.map(lambda uri: read_image(uri, s3_endpoint=self.s3_endpoint,
                                                     max_bytes=self.max_image_bytes), list(by_image))
        out = []
        for (uri, group), (data, reason, message) in zip(by_image.items(), reads):
            if reason:
                failed += [(f, reason, message) for f, _ in group]
                continue
            try:
                _, _, xb = self.worker.embed_landmarks(data, [lm for _, lm in group], max_bytes=self.max_image_bytes,
                                                       model=self.model)
            except InvalidImageError as e:
                failed += [(f, INVALID_IMAGE, str(e)) for f, _ in group]
                continue
            out += [convert.new_face(f.face_id, x, external_image_id=f.external_image_id, image_uri=f.image_uri,
                                     metadata=dict(f.metadata), detail=f.detail) for (f, _), x in zip(group, xb)]
        return out, failed


def reembed(source: str, target: str, output: str, gateway: str = "127.0.0.1:50051", embedding_model: str = "",
            s3_endpoint: str = "", faces_per_chunk: int = 1000, batch_size: int = 32, device: str = "",
            fetch_threads: int = 8, max_image_bytes: int = MAX_S3_IMAGE_BYTES, commit_batch_faces: int = 1000
            ) -> ReembedSummary:
    """Copies a face collection into a new collection of another face model; run it again to resume.

    Args:
        source: the collection to re-embed; it is only read.
        target: the new collection; created when missing (a face collection of embedding_model, with the source's
            train_threshold).
        output: folder or s3://bucket/prefix for job state and errors (under <output>/<target>/).
        gateway: host:port of the gallery.v1 gateway.
        embedding_model: the target's model ("sface", "facenet-inception-resnet-v1-casia-20180408"); "" for the
            default (sface), or an existing target's own model.
        s3_endpoint: S3 endpoint URL for S3-compatible stores; "" for AWS_ENDPOINT_URL, else AWS.
        faces_per_chunk: source faces per chunk, the unit that is committed and skipped on a re-run.
        batch_size: face crops per forward pass.
        device: torch device, "cuda" or "cpu"; "" for CUDA when present.
        fetch_threads: concurrent image reads.
        max_image_bytes: larger images fail as too_large.
        commit_batch_faces: faces per AddEmbeddings request, 1..10000.

    Returns:
        The run's summary: faces re-embedded, already there, failed by reason.

    Raises:
        ValueError: an argument out of range, a source that is not a face collection, a target of another model.
        grpc.RpcError: the gateway refused a request (other than retried UNAVAILABLE / DEADLINE_EXCEEDED).

    Example:
        >>> reembed("staff", "staff-sface", "s3://photos/reembed/").faces_reembedded
        10412
    """
    from cluster.faces.worker import FaceWorker

    for name, value in (("source", source), ("target", target), ("output", output)):
        if not value:
            raise ValueError(f"{name} is required")
    check_collection_id(target)
    if source == target:
        raise ValueError("target must differ from source: a collection's model is fixed at its creation")
    for name, value in (("faces_per_chunk", faces_per_chunk), ("batch_size", batch_size),
                        ("fetch_threads", fetch_threads), ("max_image_bytes", max_image_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 1 <= commit_batch_faces <= MAX_FACES_PER_ADD:
        raise ValueError(f"commit_batch_faces must be in [1, {MAX_FACES_PER_ADD}], got {commit_batch_faces}")

    started = time.monotonic()
    summary = ReembedSummary(source, target)
    state = JobState(ObjectStore(f"{output.rstrip('/')}/{target}", s3_endpoint=s3_endpoint or None))
    failed: Counter = Counter()
    with gateway_client(gateway) as client:
        described = client.describe(source)
        if not described.embedding_model:
            raise ValueError(f"source {source!r} holds raw embeddings: only face collections have the landmarks "
                             f"and image URIs re-embedding needs")
        model = _open_target(client, described, target, embedding_model).embedding_model
        summary.embedding_model = model
        with timed("list source"):
            faces = list_source(client, source)
        summary.faces_in_source = len(faces)
        chunks = [faces[i:i + faces_per_chunk] for i in range(0, len(faces), faces_per_chunk)]
        done = state.committed()
        pending = [c for c in chunks if chunk_key([f.face_id for f in c]) not in done]
        summary.faces_already_committed = len(faces) - sum(len(c) for c in pending)
        logger.info("%s → %s (%s): %d faces in %d chunks, %d to do", source, target, model, len(faces), len(chunks),
                    sum(len(c) for c in pending))
        if pending:
            embed = _Chunker(FaceWorker(batch_size=batch_size, device=device or None, models=(model,)), model,
                             s3_endpoint, max_image_bytes, fetch_threads)
            for chunk in pending:
                key = chunk_key([f.face_id for f in chunk])
                with timed(f"chunk {key}"):
                    new, errors = embed(chunk)
                    if errors:
                        state.store.put(JobState.errors_key(key), _errors_parquet(errors))
                    added, skipped = add_faces(client, target, new, batch_faces=commit_batch_faces)
                    reasons = Counter(r for _, r, _ in errors)
                    state.commit(key, {"source": source, "target": target, "embedding_model": model,
                                       "faces": len(chunk), "faces_reembedded": added, "faces_already_there": skipped,
                                       "faces_failed": dict(reasons)})
                failed.update(reasons)
                summary.chunks_committed += 1
                summary.faces_reembedded += added
                summary.faces_already_there += skipped
    summary.faces_failed = dict(sorted(failed.items()))
    summary.elapsed_s = time.monotonic() - started
    summary.faces_per_s = (summary.faces_reembedded + summary.faces_already_there) / max(summary.elapsed_s, 1e-9)
    logger.info("summary: %s", json.dumps(asdict(summary)))
    return summary


def main(argv: list[str] | None = None) -> ReembedSummary:
    summary = flags.run(reembed, argv, "python -m jobs.reembed")
    failed = ", ".join(f"{reason} {n}" for reason, n in summary.faces_failed.items()) or "none"
    print(f"{summary.source} → {summary.target} ({summary.embedding_model}): {summary.faces_in_source} faces "
          f"({summary.faces_already_committed} already committed), {summary.faces_reembedded} re-embedded "
          f"({summary.faces_already_there} already there), failed: {failed}", flush=True)
    print(json.dumps(asdict(summary)), flush=True)
    return summary


if __name__ == "__main__":
    main()
