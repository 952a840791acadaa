"""gallery.v1.Gallery servicer: translates messages to Gallery calls and domain errors to status codes."""

from __future__ import annotations

import functools
import logging
from datetime import timezone

import grpc
import numpy as np
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster import errors
from cluster.api import convert
from cluster.api.limits import DEFAULT_AUDIT_RECORDS_PER_PAGE, MAX_AUDIT_RECORDS_PER_PAGE
from cluster.gateway.collections import default_fpir
from cluster.gateway.gallery import Gallery
from cluster.index.calibration import CALIBRATION_QUANTILES, CALIBRATION_TAIL, Calibration
from cluster.serve import audit
from cluster.storage.object_store import ObjectStore
from cluster.storage.records import FaceRecord

logger = logging.getLogger(__name__)

_STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _status_errors(method):
    """Ends the call with the status code of a domain error, or the method's own `context.abort`; anything else
    is INTERNAL."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        try:
            return method(self, request, context)
        except errors.GalleryError as e:
            context.abort(next(code for cls, code in _STATUS.items() if isinstance(e, cls)), str(e))
        except Exception:
            if context.code() not in (None, grpc.StatusCode.OK):  # raised by context.abort: the code is set
                raise
            logger.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed; see the server log")

    return wrapper


def _deadline(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e6 else None


def _iso_time(request, name: str) -> str:
    """A Timestamp field as ISO 8601 UTC, "" when unset."""
    if not request.HasField(name):
        return ""
    try:  # nanos outside [0, 1e9) or seconds outside years 1..9999 do not convert
        return getattr(request, name).ToDatetime(timezone.utc).isoformat()
    except (ValueError, OverflowError) as e:
        raise errors.InvalidArgument(f"{name} is not a valid timestamp: {e}") from None


class GalleryServicer(gallery_pb2_grpc.GalleryServicer):
    """The collection and embedding RPCs of gallery.v1 over a `Gallery`, and the audit log's.

    Args:
        gallery: the collections.
        audit_store: where the audit log is, for QueryAuditLog; None answers it with UNIMPLEMENTED.
    """

    def __init__(self, gallery: Gallery, audit_store: ObjectStore | None = None):
        self.gallery = gallery
        self.audit_store = audit_store

    def _describe(self, collection_id: str) -> pb.CollectionDescription:
        m, state = self.gallery.describe(collection_id)
        description = pb.CollectionDescription(
            collection_id=m.collection_id, dimension=m.dimension, face_count=m.face_count,
            num_partitions=m.num_partitions,
            index_state=convert.index_state(m.index_version), nlist=m.nlist, pq_m=m.pq_m,
            pq_bits=m.pq_bits if m.index_version else 0, trained_on=m.trained_on,
            training=bool(state.maintenance and state.maintenance.is_alive()),
            train_threshold=m.train_threshold, embedding_model=m.embedding_model,
            calibration=convert.calibration_message(state.calibration, m.face_count, default_fpir(m)),
            memory_bytes=self.gallery.memory_bytes(collection_id), replicas=m.replicas,
            unavailable_partitions=self.gallery.unavailable_partitions(collection_id),
            live_replicas=self.gallery.live_replicas(collection_id),
            search_tuning=convert.search_tuning(m.target_recall, *self.gallery.search_tuning(collection_id)))
        description.created_at.FromNanoseconds(int(m.created_at * 1e9))
        return description

    @_status_errors
    def CreateCollection(self, request, context):
        self.gallery.create_collection(request.collection_id, dimension=request.dimension,
                                       train_threshold=request.train_threshold,
                                       embedding_model=request.embedding_model, replicas=request.replicas,
                                       default_fpir=request.default_fpir, target_recall=request.target_recall)
        return pb.CreateCollectionResponse(collection=self._describe(request.collection_id))

    @_status_errors
    def DescribeCollection(self, request, context):
        return self._describe(request.collection_id)

    @_status_errors
    def ListCollections(self, request, context):
        names, token = self.gallery.list_collections(request.max_results, request.next_token)
        described = []
        for name in names:
            try:
                described.append(self._describe(name))
            except errors.NotFound:  # deleted meanwhile
                continue
        return pb.ListCollectionsResponse(collections=described, next_token=token)

    @_status_errors
    def DeleteCollection(self, request, context):
        return pb.DeleteCollectionResponse(deleted_face_count=self.gallery.delete_collection(request.collection_id))

    @_status_errors
    def AddEmbeddings(self, request, context):
        m, _ = self.gallery.describe(request.collection_id)
        if request.HasField("packed"):
            if request.faces:
                raise errors.InvalidArgument("set faces or packed, not both")
            face_ids, embeddings = convert.unpack_faces(request.packed, m.dimension)
            records = [FaceRecord(face_id) for face_id in face_ids]
        else:
            embeddings = convert.embeddings_array([f.embedding for f in request.faces], m.dimension,
                                                  "faces.embedding")
            records = [FaceRecord(f.face_id, f.external_image_id, f.image_uri, dict(f.metadata),
                                  f.detail.SerializeToString() if f.HasField("detail") else b"")
                       for f in request.faces]
        added, skipped = self.gallery.add(request.collection_id, records, embeddings,
                                          skip_existing=request.skip_existing)
        return pb.AddEmbeddingsResponse(face_ids=added, skipped_face_ids=skipped,
                                        face_count=self.gallery.describe(request.collection_id)[0].face_count)

    @_status_errors
    def SearchByEmbedding(self, request, context):
        m, _ = self.gallery.describe(request.collection_id)
        xq = convert.embeddings_array(request.queries, m.dimension, "queries")
        results = self.gallery.search(
            request.collection_id, xq, request.k, nprobe=request.nprobe,
            min_similarity=request.min_similarity if request.HasField("min_similarity") else None,
            target_fpir=convert.optional_fpir(request.target_fpir), timeout_s=_deadline(context),
            allow_partial=request.allow_partial, target_recall=request.target_recall, ids_only=request.ids_only)
        response = pb.SearchByEmbeddingResponse(
            gallery_size=results.gallery_size,
            calibration=convert.calibration_message(results.calibration, results.gallery_size, results.default_fpir),
            index_state=convert.index_state(results.index_version), **convert.partial_fields(results),
            **convert.threshold_fields(results.threshold))
        if results.packed is not None:
            convert.fill_packed(response.packed, results.packed)
        for candidates in results.candidates:
            convert.add_candidates(response.results.add().candidates, candidates)
        return response

    @_status_errors
    def ListFaces(self, request, context):
        faces, token = self.gallery.list_faces(request.collection_id, request.max_results, request.next_token,
                                               include_embeddings=request.include_embeddings)
        return pb.ListFacesResponse(faces=[convert.face_message(f) for f in faces], next_token=token)

    @_status_errors
    def GetFaces(self, request, context):
        faces, unknown = self.gallery.get_faces(request.collection_id, list(request.face_ids),
                                                include_embeddings=request.include_embeddings)
        return pb.GetFacesResponse(faces=[convert.face_message(f) for f in faces], unknown_face_ids=unknown)

    @_status_errors
    def DeleteFaces(self, request, context):
        deleted, unknown = self.gallery.delete_faces(request.collection_id, list(request.face_ids))
        return pb.DeleteFacesResponse(deleted_face_ids=deleted, unknown_face_ids=unknown,
                                      face_count=self.gallery.describe(request.collection_id)[0].face_count)

    @_status_errors
    def BuildIndex(self, request, context):
        self.gallery.wait_for_maintenance(request.collection_id, _deadline(context))
        self.gallery.train(request.collection_id)
        return pb.BuildIndexResponse(collection=self._describe(request.collection_id))

    @_status_errors
    def SetCalibration(self, request, context):
        tail, quantiles = np.array(request.impostor_tail, np.float32), np.array(request.impostor_quantiles, np.float32)
        n = request.impostor_pairs
        if n < 10:
            raise errors.InvalidArgument(f"impostor_pairs must be >= 10, got {n}")
        if tail.size != min(n, CALIBRATION_TAIL) or quantiles.size != CALIBRATION_QUANTILES:
            raise errors.InvalidArgument(f"impostor_tail must hold min(impostor_pairs, {CALIBRATION_TAIL}) = "
                                         f"{min(n, CALIBRATION_TAIL)} scores and impostor_quantiles "
                                         f"{CALIBRATION_QUANTILES}; got {tail.size} and {quantiles.size}")
        for name, x, step in (("impostor_tail", tail, -1), ("impostor_quantiles", quantiles, 1)):
            if not (np.isfinite(x).all() and np.abs(x).max() <= 1.0 and np.all(step * np.diff(x) >= 0)):
                raise errors.InvalidArgument(f"{name} must be finite cosines in [-1, 1], "
                                             f"{'descending' if step < 0 else 'ascending'}")
        self.gallery.set_calibration(request.collection_id, Calibration("job", int(n), tail, quantiles))
        return pb.SetCalibrationResponse(collection=self._describe(request.collection_id))

    @_status_errors
    def QueryAuditLog(self, request, context):
        if self.audit_store is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server keeps no audit log")
        if request.max_results > MAX_AUDIT_RECORDS_PER_PAGE:
            raise errors.InvalidArgument(f"max_results must be in [0, {MAX_AUDIT_RECORDS_PER_PAGE}], "
                                         f"got {request.max_results}")
        since, until = _iso_time(request, "since"), _iso_time(request, "until")
        records = audit.query(self.audit_store, since=since, until=until, identity=request.identity,
                              collection_id=request.collection_id, case_id=request.case_id,
                              limit=request.max_results or DEFAULT_AUDIT_RECORDS_PER_PAGE)
        return pb.QueryAuditLogResponse(records=[convert.audit_record(r) for r in records])
