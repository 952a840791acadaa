"""gallery.v1 servicer with the face RPCs: translates image messages to FaceService calls and back."""

from __future__ import annotations

import functools
import logging

import grpc
from gallery.v1 import gallery_pb2 as pb

from cluster.api import convert
from cluster.faces import DetectedFace
from cluster.gateway.face_service import FaceService
from cluster.gateway.gallery import Gallery
from cluster.serve.servicer import GalleryServicer, _deadline, _status_errors
from cluster.storage.object_store import ObjectStore
from cluster.storage.s3_images import S3Object

logger = logging.getLogger(__name__)

_QUALITY_FILTERS = {pb.QUALITY_FILTER_UNSPECIFIED: "AUTO", pb.QUALITY_FILTER_NONE: "NONE",
                    pb.QUALITY_FILTER_AUTO: "AUTO", pb.QUALITY_FILTER_LOW: "LOW",
                    pb.QUALITY_FILTER_MEDIUM: "MEDIUM", pb.QUALITY_FILTER_HIGH: "HIGH"}


def _image(message: pb.Image) -> bytes | S3Object | None:
    source = message.WhichOneof("source")
    if source == "bytes":
        return message.bytes
    if source == "s3_object":
        o = message.s3_object
        return S3Object(o.bucket, o.name, o.version)
    return None


def _detail(face: DetectedFace, width: float, height: float) -> pb.FaceDetail:
    return convert.face_detail(face.box, face.landmarks, face.confidence, face.quality, width, height)


def _quality_filter(value: int) -> str:
    return _QUALITY_FILTERS.get(value, str(value))  # FaceService names the allowed values


def _optional(request, field: str) -> float | None:
    return getattr(request, field) if request.HasField(field) else None


def _face_rpc(method):
    """Answers UNIMPLEMENTED, saying why, when the server runs without face workers."""

    @functools.wraps(method)
    def wrapper(self, request, context: grpc.ServicerContext):
        if self.faces is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          f"{method.__name__}: this server runs without a face model (gallery serve --face-workers 0)")
        return method(self, request, context)

    return wrapper


class FaceGalleryServicer(GalleryServicer):
    """All of gallery.v1: the collection and embedding RPCs, and the face RPCs over a `FaceService`.

    Args:
        gallery: the collections.
        faces: the image requests; None answers the face RPCs with UNIMPLEMENTED.
        audit_store: where the audit log is, for QueryAuditLog.
    """

    def __init__(self, gallery: Gallery, faces: FaceService | None, audit_store: ObjectStore | None = None):
        super().__init__(gallery, audit_store)
        self.faces = faces

    @_face_rpc
    @_status_errors
    def DetectFaces(self, request, context):
        found = self.faces.detect(_image(request.image), max_faces=request.max_faces, timeout_s=_deadline(context))
        return pb.DetectFacesResponse(faces=[_detail(f, found.width, found.height) for f in found.faces],
                                      image_width=found.width,
                                      image_height=found.height)

    @_face_rpc
    @_status_errors
    def IndexFaces(self, request, context):
        indexed = self.faces.index_faces(
            request.collection_id, _image(request.image), external_image_id=request.external_image_id,
            max_faces=request.max_faces, quality_filter=_quality_filter(request.quality_filter),
            metadata=dict(request.metadata), timeout_s=_deadline(context))
        unindexed = [pb.UnindexedFace(detail=_detail(u.face, indexed.width, indexed.height),
                                      reasons=[pb.UnindexedFace.Reason.Value(r) for r in u.reasons])
                     for u in indexed.unindexed]
        return pb.IndexFacesResponse(indexed_faces=[convert.face_message(r) for r in indexed.indexed],
                                     unindexed_faces=unindexed, embedding_model=indexed.embedding_model)

    @_face_rpc
    @_status_errors
    def SearchFacesByImage(self, request, context):
        search = self.faces.search_by_image(
            request.collection_id, _image(request.image), k=request.k,
            min_similarity=_optional(request, "min_similarity"), all_faces=request.all_faces,
            quality_filter=_quality_filter(request.quality_filter), timeout_s=_deadline(context),
            allow_partial=request.allow_partial)
        results = search.results
        response = pb.SearchFacesByImageResponse(gallery_size=results.gallery_size,
                                                 calibration=convert.calibration_message(results.calibration),
                                                 **convert.partial_fields(results))
        for face, candidates in zip(search.faces, results.candidates):
            searched = response.results.add(searched_face=_detail(face, search.width, search.height))
            convert.add_candidates(searched.candidates, candidates)
        return response

    @_face_rpc
    @_status_errors
    def SearchFaces(self, request, context):
        record, results = self.faces.search_faces(request.collection_id, request.face_id, k=request.k,
                                                  min_similarity=_optional(request, "min_similarity"),
                                                  timeout_s=_deadline(context), allow_partial=request.allow_partial)
        response = pb.SearchFacesResponse(searched_face_id=record.face_id, gallery_size=results.gallery_size,
                                          calibration=convert.calibration_message(results.calibration),
                                          **convert.partial_fields(results))
        convert.add_candidates(response.candidates, results.candidates[0])
        return response

    @_face_rpc
    @_status_errors
    def CompareFaces(self, request, context):
        c = self.faces.compare_faces(_image(request.source_image), _image(request.target_image),
                                     min_similarity=_optional(request, "min_similarity"),
                                     timeout_s=_deadline(context), embedding_model=request.embedding_model)
        tw, th = c.target_size
        return pb.CompareFacesResponse(
            source_face=_detail(c.source, *c.source_size),
            face_matches=[pb.CompareFacesMatch(face=_detail(m.face, tw, th), similarity=m.similarity,
                                               false_match_rate=m.false_match_rate) for m in c.matches],
            unmatched_faces=[_detail(f, tw, th) for f in c.unmatched], embedding_model=c.embedding_model)
