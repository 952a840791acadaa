"""Conversions between gallery.v1 messages and the domain's values: one function per message.

The servicers, the client and the jobs build and read messages through these only. This is the
lowest stage but errors (tests/test_layout.py), so the domain's records are read by attribute:
the Protocols below name what each conversion reads of a `FaceRecord` (cluster/storage/records.py),
a `Calibration` (cluster/index/calibration.py) or a search candidate (cluster/gateway/gallery.py).
Messages that become domain records (NewFace, Image) are turned into them by the servicers, which
may import those classes.

Responses are built in place, field by field (`fill_face`, `add_candidates`): a message built apart
and then passed to its parent's constructor is copied there, once per level of nesting, which costs
more than the search on large responses (benchmarks/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
from gallery.v1 import gallery_pb2 as pb

from cluster.errors import InvalidArgument

_WIRE_DTYPE = np.dtype("<f4")

# DetectedFace's landmark order: the subject's right eye, left eye, nose, right and left mouth corners.
LANDMARK_TYPES = (pb.Landmark.EYE_RIGHT, pb.Landmark.EYE_LEFT, pb.Landmark.NOSE, pb.Landmark.MOUTH_RIGHT,
                  pb.Landmark.MOUTH_LEFT)

_CALIBRATION_SOURCES = {"model": pb.CALIBRATION_SOURCE_MODEL, "gallery": pb.CALIBRATION_SOURCE_GALLERY,
                        "job": pb.CALIBRATION_SOURCE_JOB}


class Record(Protocol):
    """What a Face message is made of: a `cluster.storage.records.FaceRecord`."""

    face_id: str
    external_image_id: str
    image_uri: str
    metadata: Mapping[str, str]
    detail: bytes  # a serialized FaceDetail, empty when the face did not come from an image
    embedding: np.ndarray | None


class ScoredRecord(Protocol):
    """What a Candidate message is made of: a gateway search candidate."""

    record: Record
    similarity: float
    false_match_rate: float
    gallery_false_match_probability: float
    false_match_rate_is_bound: bool


class Threshold(Protocol):
    """What a response's threshold_used and fpir_bound are made of: a gateway `Threshold`."""

    similarity: float
    fpir_bound: float


class PartialAnswer(Protocol):
    """What a search response's `partial` and `missing_partitions` are made of: a gateway `SearchResults`."""

    missing_partitions: list[int]


class Packed(Protocol):
    """What a PackedCandidates message is made of: a gateway `PackedCandidates`."""

    counts: np.ndarray
    face_ids: list[str]
    similarities: np.ndarray
    gallery_false_match_probabilities: np.ndarray


class TunedPoint(Protocol):
    """What a SearchTuningPoint message is made of: a `cluster.index.tuning.SearchPoint`."""

    nprobe: int
    rerank_depth: int
    recall: float
    stderr: float

    def new_photo_recall(self) -> float: ...


class ScoreCalibration(Protocol):
    """What a Calibration message is made of: a `cluster.index.calibration.Calibration`."""

    source: str  # "model", "gallery" or "job"
    n_pairs: int
    default_min_similarity: float

    def threshold_for_fpir(self, fpir: float, gallery_size: int) -> Threshold: ...


# ---- Embedding -------------------------------------------------------------

def encode(x: np.ndarray) -> bytes:
    """Packs one vector as little-endian float32 bytes, as Embedding.values holds it."""
    return np.ascontiguousarray(x, dtype=_WIRE_DTYPE).tobytes()


def decode(values: bytes, dimension: int, *, expected_dimension: int, what: str = "embedding") -> np.ndarray:
    """Unpacks one vector and checks it against the collection's dimension.

    Raises:
        InvalidArgument: wrong dimension, byte length not 4 * dimension.
    """
    if dimension != expected_dimension:
        raise InvalidArgument(f"{what}: dimension is {dimension}, the collection's is {expected_dimension}")
    if len(values) != 4 * dimension:
        raise InvalidArgument(f"{what}: {len(values)} bytes given, 4 * dimension = {4 * dimension} expected")
    return np.frombuffer(values, dtype=_WIRE_DTYPE).astype(np.float32)


def embedding(x: np.ndarray) -> pb.Embedding:
    """An Embedding message of one vector."""
    return pb.Embedding(values=encode(x), dimension=np.asarray(x).size)


def embeddings_array(messages: Iterable[pb.Embedding], dimension: int, what: str) -> np.ndarray:
    """Decodes repeated Embedding messages into an (n, dimension) float32 array; `what` names the field in errors.

    Raises:
        InvalidArgument: an embedding of another dimension, or of the wrong byte length.
    """
    rows = [decode(e.values, e.dimension, expected_dimension=dimension, what=f"{what}[{i}]")
            for i, e in enumerate(messages)]
    return np.stack(rows) if rows else np.empty((0, dimension), dtype=np.float32)


def packed_faces(face_ids: Sequence[str], x: np.ndarray) -> pb.PackedFaces:
    """A PackedFaces message of (n, d) embeddings under the given ids."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != len(face_ids):
        raise ValueError(f"embeddings of shape {x.shape} for {len(face_ids)} face ids")
    return pb.PackedFaces(face_ids=face_ids, dimension=x.shape[1], embeddings=encode(x))


def unpack_faces(packed: pb.PackedFaces, dimension: int) -> tuple[list[str], np.ndarray]:
    """(face ids, (n, dimension) float32 embeddings) of a PackedFaces message.

    Raises:
        InvalidArgument: another dimension than the collection's, or embeddings of the wrong byte length.
    """
    n = len(packed.face_ids)
    if packed.dimension != dimension:
        raise InvalidArgument(f"packed.dimension is {packed.dimension}, the collection's is {dimension}")
    if len(packed.embeddings) != 4 * n * dimension:
        raise InvalidArgument(f"packed.embeddings: {len(packed.embeddings)} bytes given, 4 * {n} faces * {dimension} "
                              f"= {4 * n * dimension} expected")
    x = np.frombuffer(packed.embeddings, dtype=_WIRE_DTYPE).astype(np.float32).reshape(n, dimension)
    return list(packed.face_ids), x


# ---- FaceDetail, Face, NewFace ---------------------------------------------

def face_detail(box: Sequence[float], landmarks: np.ndarray, confidence: float, quality: float, width: float,
                height: float) -> pb.FaceDetail:
    """A detected face as FaceDetail: box and landmarks in pixels become ratios of the image size.

    Args:
        box: (x, y, width, height) of the face in pixels, as `DetectedFace.box`.
        landmarks: 5x2 (x, y) pixels in `LANDMARK_TYPES` order.
        confidence, quality: the detector's scores, 0..1.
        width, height: the image's size in pixels.
    """
    x, y, w, h = box
    return pb.FaceDetail(
        bounding_box=pb.BoundingBox(left=x / width, top=y / height, width=w / width, height=h / height),
        landmarks=[pb.Landmark(type=t, x=float(lx) / width, y=float(ly) / height)
                   for t, (lx, ly) in zip(LANDMARK_TYPES, landmarks)],
        confidence=confidence, quality=quality)


def fill_face(face: pb.Face, record: Record) -> pb.Face:
    """Writes a record into a Face message in place (say a response's repeated field) and returns it."""
    face.face_id = record.face_id
    face.external_image_id = record.external_image_id
    face.image_uri = record.image_uri
    if record.metadata:
        face.metadata.update(record.metadata)
    if record.detail:
        face.detail.ParseFromString(record.detail)
    if record.embedding is not None:
        face.embedding.values = encode(record.embedding)
        face.embedding.dimension = record.embedding.size
    return face


def face_message(record: Record) -> pb.Face:
    """A Face message of a record."""
    return fill_face(pb.Face(), record)


def new_face(face_id: str, x: np.ndarray, *, external_image_id: str = "", image_uri: str = "",
             metadata: Mapping[str, str] | None = None, detail: pb.FaceDetail | None = None) -> pb.NewFace:
    """A NewFace message: a face to enroll from its embedding `x`."""
    return pb.NewFace(face_id=face_id, embedding=embedding(x), external_image_id=external_image_id,
                      image_uri=image_uri, metadata=dict(metadata or {}), detail=detail)


# ---- search results --------------------------------------------------------

def calibration_message(calibration: ScoreCalibration | None, gallery_size: int = 0,
                        default_fpir: float = 0.0) -> pb.Calibration:
    """A Calibration message; None (no calibration yet) is source NONE with no default threshold (-1).

    With a default FPIR, the default threshold is the one it gives at `gallery_size` faces.
    """
    if calibration is None:
        return pb.Calibration(source=pb.CALIBRATION_SOURCE_NONE, default_min_similarity=-1.0,
                              default_fpir=default_fpir)
    threshold = (calibration.threshold_for_fpir(default_fpir, gallery_size).similarity if default_fpir
                 else calibration.default_min_similarity)
    return pb.Calibration(source=_CALIBRATION_SOURCES[calibration.source], impostor_pairs=calibration.n_pairs,
                          default_min_similarity=threshold, default_fpir=default_fpir)


def threshold_fields(threshold: Threshold) -> dict:
    """A search or compare response's threshold_used and fpir_bound."""
    return {"threshold_used": threshold.similarity, "fpir_bound": threshold.fpir_bound}


def optional_fpir(target_fpir: float) -> float | None:
    """A request's target_fpir: None when unset (0)."""
    return None if target_fpir == 0.0 else target_fpir


def add_candidates(field, candidates: Iterable[ScoredRecord]) -> None:
    """Appends candidates to a repeated Candidate field, in place."""
    for c in candidates:
        fill_face(field.add(similarity=c.similarity, false_match_rate=c.false_match_rate,
                            gallery_false_match_probability=c.gallery_false_match_probability,
                            false_match_rate_is_bound=c.false_match_rate_is_bound).face, c.record)


def fill_packed(packed: pb.PackedCandidates, candidates: Packed) -> None:
    """Writes a lean search's candidates into a PackedCandidates message in place: whole arrays, no loop."""
    packed.counts.extend(candidates.counts.tolist())
    packed.face_ids.extend(candidates.face_ids)
    packed.similarities = np.ascontiguousarray(candidates.similarities, dtype="<f4").tobytes()
    packed.gallery_false_match_probabilities = np.ascontiguousarray(
        candidates.gallery_false_match_probabilities, dtype="<f8").tobytes()


def unpack(packed: pb.PackedCandidates) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
    """Per query, (face ids, similarities, gallery false-match probabilities) of a PackedCandidates message."""
    similarities = np.frombuffer(packed.similarities, dtype="<f4")
    probabilities = np.frombuffer(packed.gallery_false_match_probabilities, dtype="<f8")
    ends = np.cumsum(np.asarray(packed.counts, dtype=np.int64)).tolist()
    face_ids = list(packed.face_ids)
    return [(face_ids[start:end], similarities[start:end], probabilities[start:end])
            for start, end in zip([0] + ends[:-1], ends)]


def search_tuning(target_recall: float, chosen: TunedPoint | None, points: Sequence[TunedPoint],
                  sample_queries: int) -> pb.SearchTuning:
    """A SearchTuning message: the target, and the setting chosen for it from the points measured (None: not
    measured)."""
    message = pb.SearchTuning(target_recall=target_recall, measured=chosen is not None, sample_queries=sample_queries,
                              points=[pb.SearchTuningPoint(nprobe=p.nprobe, rerank_depth=p.rerank_depth,
                                                           recall_at_10=p.recall, recall_at_10_stderr=p.stderr)
                                      for p in points])
    if chosen is not None:
        message.nprobe, message.rerank_depth, message.recall_at_10 = chosen.nprobe, chosen.rerank_depth, chosen.recall
        message.new_photo_recall_at_10 = chosen.new_photo_recall()
    return message


def partial_fields(results: PartialAnswer) -> dict:
    """A search response's `partial` and `missing_partitions`, from a gateway search's results."""
    return {"partial": bool(results.missing_partitions), "missing_partitions": results.missing_partitions}


def index_state(index_version: int) -> pb.IndexState.ValueType:
    """The IndexState of a collection whose live index has this version (0: exact search)."""
    return pb.INDEX_STATE_IVF_PQ if index_version else pb.INDEX_STATE_EXACT


def audit_record(record: Mapping) -> pb.AuditRecord:
    """An audit log record (cluster/serve/audit.py) as the message auditors read."""
    return pb.AuditRecord(**{name: str(record.get(name, "")) for name in (
        "time", "identity", "method", "collection_id", "purpose", "case_id", "code", "hash")},
        json=json.dumps(record, sort_keys=True, default=str))
