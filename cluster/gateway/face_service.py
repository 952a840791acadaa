"""FaceService: the image requests (detect, index, search by image or face id, compare) over a pool
of FaceWorker actors and a Gallery. Plain Python; the gRPC servicer only translates to and from it.

Detection and embedding run in the FaceWorker actors (on GPUs where Ray has some), the same
class the enrollment jobs run through Ray Data; this module picks an actor, reads S3 images,
applies the request's rules (max faces, quality filter, thresholds) and talks to the Gallery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ray

from cluster.api import convert
from cluster.api.limits import (
    CALL_TIMEOUT_S,
    DEFAULT_K,
    DEFAULT_MAX_FACES,
    MAX_COMPARE_TARGET_FACES,
    MAX_EXTERNAL_IMAGE_ID_LENGTH,
    MAX_FACES_PER_IMAGE,
    MAX_IMAGE_BYTES,
    MAX_K,
)
from cluster.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from cluster.faces import DetectedFace, ImageTooLargeError, InvalidImageError, quality_filter_threshold
from cluster.faces.worker import ImageFaces
from cluster.gateway.gallery import Gallery, SearchResults
from cluster.gateway.search import Threshold, check_threshold_args, choose_threshold
from cluster.storage.records import FaceRecord
from cluster.storage.s3_images import S3ImageReader, S3Object

logger = logging.getLogger(__name__)

# CompareFaces' default false-match rate when the request sets no threshold. A 1:1 comparison is often a
# verification someone acts on, so it is held as strictly as a search of a 100-face gallery at the default
# FPIR (1 - (1 - 1e-4)^100 ≈ 0.01); the shipped calibrations certify it (13 of their 210,273 impostor pairs
# reach the threshold it gives: SFace 0.462, FaceNet 0.708).
DEFAULT_COMPARE_FMR = 1e-4
SMALL_FACE_PX = 20  # a face model has too few pixels to identify a face this small (see faces/quality.py)

Image = bytes | S3Object  # what a request gives: the image's bytes, or an S3 object to read


@dataclass
class UnindexedFace:
    """A face IndexFaces found but did not enroll, and why (UnindexedFace.Reason names)."""

    face: DetectedFace
    reasons: list[str]


@dataclass
class IndexedFaces:
    """The outcome of `index_faces`: records enrolled (largest first) and faces left out."""

    indexed: list[FaceRecord]
    unindexed: list[UnindexedFace]
    width: int
    height: int
    embedding_model: str  # the collection's model, which embedded the faces


@dataclass
class FaceSearch:
    """The probe faces of `search_by_image` (largest first) and one candidate list per face."""

    faces: list[DetectedFace]
    width: int
    height: int
    results: SearchResults


@dataclass
class FaceMatch:
    face: DetectedFace
    similarity: float
    false_match_rate: float  # -1 when the model has no calibration
    false_match_rate_is_bound: bool = False  # above every impostor measured: a 95 % upper bound


@dataclass
class Comparison:
    """The outcome of `compare_faces`; boxes are relative to each face's own image size."""

    source: DetectedFace
    source_size: tuple[int, int]  # (width, height)
    matches: list[FaceMatch]  # best first
    unmatched: list[DetectedFace]  # largest first
    target_size: tuple[int, int]
    embedding_model: str  # the model both images were embedded with
    threshold: Threshold = Threshold(-1.0)


def unindexed_reasons(face: DetectedFace, min_quality: float) -> list[str]:
    """Why a face that was not embedded for IndexFaces was left out."""
    if face.quality < min_quality:
        small = min(face.width, face.height) <= SMALL_FACE_PX
        return ["LOW_QUALITY", "SMALL_FACE"] if small else ["LOW_QUALITY"]
    return ["EXCEEDS_MAX_FACES"]


def _embedded(faces: list) -> list:
    return [f for f in faces if getattr(f, "embedding", None) is not None]


class FaceService:
    """Image requests over FaceWorker actors and a Gallery; each request embeds with the model of its
    collection (CompareFaces: the default model unless it names one).

    Args:
        gallery: the collections; `gallery.model` is the default model and `gallery.models` every model
            the workers embed with (see `cluster/faces/models.py`).
        workers: FaceWorker actor handles (see `runtime.start_face_workers`).
        s3: reader for images given as S3 objects (its `max_bytes` is the S3 limit).
        max_image_bytes: largest image accepted as bytes in a request.
        call_timeout_s: bound on one call to a worker when the caller gives no deadline.

    Example:
        >>> workers = runtime.start_face_workers(1)
        >>> gallery = Gallery(store, shards, model=describe_model(), models=describe_models())
        >>> faces = FaceService(gallery, workers)
        >>> gallery.create_collection("staff")
        >>> faces.index_faces("staff", open("alice.jpg", "rb").read(), external_image_id="alice").indexed[0].face_id
        '6f1c…'
    """

    def __init__(self, gallery: Gallery, workers: Sequence, *, s3: S3ImageReader | None = None,
                 max_image_bytes: int = MAX_IMAGE_BYTES, call_timeout_s: float = CALL_TIMEOUT_S):
        if gallery.model is None:
            raise ValueError("FaceService needs a Gallery built with model= (the face workers' EmbeddingModel)")
        if not workers:
            raise ValueError("FaceService needs at least one face worker")
        if max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be >= 1, got {max_image_bytes}")
        self.gallery = gallery
        self.model = gallery.model
        self.workers = list(workers)
        self.s3 = s3 or S3ImageReader()
        self.max_image_bytes = max_image_bytes
        self.call_timeout_s = call_timeout_s
        self._in_flight = [0] * len(self.workers)
        self._lock = threading.Lock()

    # ---- plumbing ----------------------------------------------------------

    @contextlib.contextmanager
    def _worker(self):
        """The least busy worker, for the duration of one call."""
        with self._lock:
            i = min(range(len(self.workers)), key=self._in_flight.__getitem__)
            self._in_flight[i] += 1
        try:
            yield self.workers[i]
        finally:
            with self._lock:
                self._in_flight[i] -= 1

    def _run(self, calls: list[tuple[str, str, bytes, dict]], deadline: float) -> list:
        """Runs (what, FaceWorker method, image bytes, keyword arguments) calls on workers in parallel.

        `what` names the image in error messages ("image", "source_image").
        """
        with contextlib.ExitStack() as stack:
            refs = [getattr(stack.enter_context(self._worker()), method).remote(data, **kwargs)
                    for _, method, data, kwargs in calls]
            _, pending = ray.wait(refs, num_returns=len(refs), timeout=max(deadline - time.monotonic(), 0.001))
            if pending:
                raise DeadlineExceeded(f"{calls[refs.index(pending[0])][0]}: face detection did not finish in time")
            out = []
            for ref in refs:  # every result is fetched, so that Ray does not log an error nobody read
                try:
                    out.append(ray.get(ref))
                except ray.exceptions.RayError as e:  # the worker's own errors arrive as RayTaskError subclasses
                    out.append(e)
        for (what, *_), result in zip(calls, out):
            if isinstance(result, InvalidImageError):  # Ray raises the worker's error as an instance of its class
                kind = ResourceExhausted if isinstance(result, ImageTooLargeError) else InvalidArgument
                raise kind(f"{what}: {getattr(result, 'cause', result)}") from None
            if isinstance(result, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
                raise Unavailable(f"a face worker is unavailable (restarting?): {result}") from result
            if isinstance(result, Exception):
                raise result
        return out

    def _deadline(self, timeout_s: float | None) -> float:
        return time.monotonic() + (timeout_s if timeout_s is not None else self.call_timeout_s)

    def _read(self, image: Image | None, what: str) -> tuple[bytes, int, str]:
        """(data, the byte limit that applies to it, its URI or "")."""
        if image is None:
            raise InvalidArgument(f"{what}: give the image's bytes or an s3_object")
        if isinstance(image, S3Object):
            try:
                return self.s3.read(image), self.s3.max_bytes, image.uri
            except (InvalidArgument, ResourceExhausted) as e:
                raise type(e)(f"{what}: {e}") from None
        # Refused here rather than in the worker, so that an oversized request is not shipped to it.
        if len(image) > self.max_image_bytes:
            raise ResourceExhausted(f"{what}: image is {len(image)} bytes, over the limit of {self.max_image_bytes} "
                                  f"bytes for image bytes; larger images can be given as an S3 object "
                                  f"(up to {self.s3.max_bytes} bytes)")
        return bytes(image), self.max_image_bytes, ""

    def _face_collection(self, collection_id: str, *, min_similarity: float | None = None,
                         target_fpir: float | None = None) -> str:
        """The collection's face model; raises unless the workers can embed with it and the threshold arguments
        are valid for the collection."""
        m, state = self.gallery.describe(collection_id)
        check_threshold_args(state.calibration, min_similarity=min_similarity, target_fpir=target_fpir)
        if not m.embedding_model:
            raise FailedPrecondition(
                f"collection {collection_id!r} holds raw embeddings (dimension {m.dimension}, no embedding model); "
                f"image requests need a collection created with dimension 0 (a face model)")
        if m.embedding_model not in self.gallery.models:
            raise FailedPrecondition(f"collection {collection_id!r} holds {m.embedding_model} embeddings; this "
                                     f"server embeds faces with {', '.join(sorted(self.gallery.models))}")
        return m.embedding_model

    def _compare_model(self, name: str):
        """The model CompareFaces embeds with: `name`, or the default for ""."""
        model = self.gallery.models.get(name) if name else self.model
        if model is None:
            raise InvalidArgument(f"embedding_model: unknown face model {name!r}; this server has "
                                  f"{', '.join(sorted(self.gallery.models))} ('' for {self.model.name})")
        return model

    @staticmethod
    def _max_faces(max_faces: int, limit: int = MAX_FACES_PER_IMAGE) -> int:
        if not 0 <= max_faces <= limit:
            raise InvalidArgument(f"max_faces must be in [1, {limit}] (0 for {DEFAULT_MAX_FACES}), got {max_faces}")
        return max_faces or min(DEFAULT_MAX_FACES, limit)

    @staticmethod
    def _k(k: int) -> int:
        if not 0 <= k <= MAX_K:
            raise InvalidArgument(f"k must be in [1, {MAX_K}] (0 for {DEFAULT_K}), got {k}")
        return k or DEFAULT_K

    @staticmethod
    def _min_quality(quality_filter: str) -> float:
        try:
            return quality_filter_threshold(quality_filter)
        except ValueError as e:
            raise InvalidArgument(f"quality_filter: {e}") from None

    @staticmethod
    def _min_similarity(min_similarity: float | None) -> None:
        if min_similarity is not None and not -1.0 <= min_similarity <= 1.0:
            raise InvalidArgument(f"min_similarity must be a cosine similarity in [-1, 1], got {min_similarity}")

    # ---- requests ----------------------------------------------------------

    def detect(self, image: Image | None, *, max_faces: int = 0, timeout_s: float | None = None) -> ImageFaces:
        """Faces of an image, largest first, without embeddings.

        Args:
            image: bytes or an S3 object.
            max_faces: 1..1000, 0 for 100.
            timeout_s: the caller's remaining deadline.

        Raises:
            InvalidArgument (bad image or argument), ResourceExhausted (image over its size limit),
            DeadlineExceeded, Unavailable.
        """
        max_faces = self._max_faces(max_faces)
        deadline = self._deadline(timeout_s)
        data, max_bytes, _ = self._read(image, "image")
        # embed_max_faces=0 is refused by the worker; a quality no face reaches embeds none.
        return self._run([("image", "detect", data, {"max_faces": max_faces, "max_bytes": max_bytes})], deadline)[0]

    def index_faces(self, collection_id: str, image: Image | None, *, external_image_id: str = "",
                    max_faces: int = 0, quality_filter: str = "AUTO", metadata: dict[str, str] | None = None,
                    timeout_s: float | None = None) -> IndexedFaces:
        """Detects, embeds and enrolls the faces of an image; each gets a new UUID face id.

        The largest `max_faces` faces that pass the quality filter are enrolled, together
        (all or nothing); the others come back as unindexed with their reasons.

        Args:
            collection_id: a face collection (created with dimension 0).
            image: bytes or an S3 object; its URI is stored with each face.
            external_image_id: the caller's id for the image, at most 255 characters.
            max_faces: faces enrolled, 1..1000, 0 for 100; at least 100 are detected.
            quality_filter: NONE, AUTO, LOW, MEDIUM or HIGH (see faces/quality.py).
            metadata: stored with every face.
            timeout_s: the caller's remaining deadline.

        Raises:
            InvalidArgument, ResourceExhausted (image over its size limit), NotFound (collection),
            FailedPrecondition (not a collection of this face model), DeadlineExceeded, Unavailable.
        """
        max_faces = self._max_faces(max_faces)
        min_quality = self._min_quality(quality_filter)
        if len(external_image_id) > MAX_EXTERNAL_IMAGE_ID_LENGTH:
            raise InvalidArgument(f"external_image_id: at most {MAX_EXTERNAL_IMAGE_ID_LENGTH} characters, "
                                  f"got {len(external_image_id)}")
        model = self._face_collection(collection_id)
        deadline = self._deadline(timeout_s)
        data, max_bytes, uri = self._read(image, "image")
        (found,) = self._run([("image", "analyze_selected", data, {
            "max_faces": max(max_faces, DEFAULT_MAX_FACES), "min_quality": min_quality, "embed_max_faces": max_faces,
            "max_bytes": max_bytes, "model": model})], deadline)
        faces = _embedded(found.faces)
        unindexed = [UnindexedFace(f, unindexed_reasons(f, min_quality))
                     for f in found.faces if getattr(f, "embedding", None) is None]
        # A record keeps its face's FaceDetail serialized, as the store holds it (cluster/storage/records.py).
        records = [FaceRecord(str(uuid.uuid4()), external_image_id, uri, dict(metadata or {}),
                              convert.face_detail(f.box, f.landmarks, f.confidence, f.quality, found.width,
                                                  found.height).SerializeToString()) for f in faces]
        if records:
            self.gallery.add(collection_id, records, np.stack([f.embedding for f in faces]))
        logger.info("%s: indexed %d faces of %s, %d left out", collection_id, len(records),
                    uri or external_image_id or "an image", len(unindexed))
        return IndexedFaces(records, unindexed, found.width, found.height, model)

    def search_by_image(self, collection_id: str, image: Image | None, *, k: int = 0,
                        min_similarity: float | None = None, target_fpir: float | None = None,
                        all_faces: bool = False, quality_filter: str = "AUTO", timeout_s: float | None = None,
                        allow_partial: bool = False) -> FaceSearch:
        """Searches a face collection with the largest face of an image, or with each of its faces.

        Args:
            k: candidates per face, 1..1000, 0 for 10.
            min_similarity: None for the collection's calibrated default.
            target_fpir: instead of min_similarity, a target FPIR in (0, 1) (see `Gallery.search`).
            all_faces: search with every face that passes the quality filter (up to 100).
            quality_filter: faces under it are not searched with.
            allow_partial: see `Gallery.search`.

        Raises:
            InvalidArgument (also: no usable face in the image), ResourceExhausted (image over its size
            limit), NotFound, FailedPrecondition (not a face collection of this model, or an empty one),
            DeadlineExceeded, Unavailable.
        """
        k = self._k(k)
        self._min_similarity(min_similarity)
        min_quality = self._min_quality(quality_filter)
        model = self._face_collection(collection_id, min_similarity=min_similarity, target_fpir=target_fpir)
        deadline = self._deadline(timeout_s)
        data, max_bytes, _ = self._read(image, "image")
        (found,) = self._run([("image", "analyze_selected", data, {
            "max_faces": DEFAULT_MAX_FACES, "min_quality": min_quality, "embed_max_faces": None if all_faces else 1,
            "max_bytes": max_bytes, "model": model})], deadline)
        faces = _embedded(found.faces)
        if not faces:
            raise InvalidArgument(f"image: no face to search with ({len(found.faces)} found, none of quality >= "
                                  f"{min_quality} as quality_filter {quality_filter} asks)" if found.faces
                                  else "image: no face found")
        results = self.gallery.search(collection_id, np.stack([f.embedding for f in faces]), k,
                                      min_similarity=min_similarity, target_fpir=target_fpir,
                                      timeout_s=max(deadline - time.monotonic(), 0.001), allow_partial=allow_partial)
        return FaceSearch(faces, found.width, found.height, results)

    def search_faces(self, collection_id: str, face_id: str, *, k: int = 0, min_similarity: float | None = None,
                     target_fpir: float | None = None, timeout_s: float | None = None,
                     allow_partial: bool = False) -> tuple[FaceRecord, SearchResults]:
        """Searches a collection with the stored embedding of one of its faces, which is left out of the results.

        Returns:
            (the searched face's record, its candidates as query 0).

        Raises:
            InvalidArgument, NotFound (collection or face id), DeadlineExceeded, Unavailable (also with
            allow_partial when the searched face's own worker is down: it is read first).
        """
        k = self._k(k)
        self._min_similarity(min_similarity)
        if not face_id:
            raise InvalidArgument("face_id is required")
        found, _ = self.gallery.get_faces(collection_id, [face_id], include_embeddings=True)
        if not found:
            raise NotFound(f"face {face_id!r} is not in collection {collection_id!r}")
        record = found[0]
        # One more than asked, since the face finds itself.
        results = self.gallery.search(collection_id, record.embedding[None].astype(np.float32), min(k + 1, MAX_K),
                                      min_similarity=min_similarity, target_fpir=target_fpir, timeout_s=timeout_s,
                                      allow_partial=allow_partial)
        others = [c for c in results.candidates[0] if c.record.face_id != face_id][:k]
        return record, dataclasses.replace(results, candidates=[others])

    def compare_faces(self, source: Image | None, target: Image | None, *, min_similarity: float | None = None,
                      target_fpir: float | None = None, timeout_s: float | None = None,
                      embedding_model: str = "") -> Comparison:
        """Compares the largest face of `source` with up to 100 faces of `target` (1:1 comparisons).

        A match is a candidate for human review, never an identification.

        Args:
            min_similarity: matches are the target faces at or above it.
            target_fpir: instead, the largest acceptable false-match rate, in (0, 1): the threshold is the
                model calibration's for it (a gallery of one face). Neither: DEFAULT_COMPARE_FMR (every face
                while a model is uncalibrated).
            embedding_model: the model to embed with; "" for the default.

        Raises:
            InvalidArgument (bad image, no face in the source, unknown model), ResourceExhausted (an image
            over its size limit), DeadlineExceeded, Unavailable.
        """
        self._min_similarity(min_similarity)
        model = self._compare_model(embedding_model)
        calibration = model.calibration
        threshold = choose_threshold(calibration, 1, min_similarity=min_similarity, target_fpir=target_fpir,
                                     default_fpir=DEFAULT_COMPARE_FMR)
        min_similarity = threshold.similarity
        deadline = self._deadline(timeout_s)
        source_data, source_max_bytes, _ = self._read(source, "source_image")
        target_data, target_max_bytes, _ = self._read(target, "target_image")
        src, tgt = self._run([
            ("source_image", "analyze_selected", source_data,
             {"max_faces": 1, "max_bytes": source_max_bytes, "model": model.name}),
            ("target_image", "analyze_selected", target_data,
             {"max_faces": MAX_COMPARE_TARGET_FACES, "max_bytes": target_max_bytes, "model": model.name})], deadline)
        if not src.faces:
            raise InvalidArgument("source_image: no face found")
        probe = src.faces[0]
        targets = tgt.faces
        similarities = (np.stack([f.embedding for f in targets]) @ probe.embedding if targets
                        else np.empty(0, np.float32))
        fmr = calibration.false_match_rate(similarities) if calibration else np.full(similarities.shape, -1.0)
        bound = calibration.false_match_rate_is_bound(similarities) if calibration else np.zeros(similarities.shape)
        order = np.argsort(-similarities, kind="stable")
        matches = [FaceMatch(targets[i], float(similarities[i]), float(fmr[i]), bool(bound[i]))
                   for i in order if similarities[i] >= min_similarity]
        unmatched = [f for f, s in zip(targets, similarities) if s < min_similarity]
        return Comparison(probe, (src.width, src.height), matches, unmatched, (tgt.width, tgt.height), model.name,
                          threshold)

