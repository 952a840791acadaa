"""The trust interceptor: who is calling, whether they may, why they ask, and a durable record of it all.

Every gallery.v1 call goes through, in this order: its body is decoded (bytes that do not parse get
INVALID_ARGUMENT, not INTERNAL); the caller is identified by a bearer token or a client certificate
(UNAUTHENTICATED); the caller's role and collections are checked (PERMISSION_DENIED); a search or compare
must state a purpose and a case id (INVALID_ARGUMENT); then the call runs. Every call, refused or not,
is written to the audit log before it is answered; a call whose record cannot be written is not answered
(UNAVAILABLE). Health and reflection are open to all and not audited.
"""

from __future__ import annotations

import hashlib
import logging
import time

import grpc
import numpy as np

from cluster.serve.audit import AuditLog, AuditUnavailable, elapsed_ms
from cluster.serve.authz import PermissionDenied, authorize
from cluster.serve.tokens import Principal, TokenRegistry

logger = logging.getLogger(__name__)

GALLERY_PREFIX = "/gallery.v1.Gallery/"
# Calls that read the gallery about a person: they must say why, and for which case.
ACCOUNTABLE = frozenset({"SearchByEmbedding", "SearchFacesByImage", "SearchFaces", "CompareFaces"})
MAX_PURPOSE_LENGTH = 1000


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code, self.details = code, details


class TrustInterceptor(grpc.ServerInterceptor):
    """Authentication, authorization, accountability and the audit log for gallery.v1.

    Args:
        audit: where every call is recorded before it is answered.
        tokens: bearer tokens; None when callers are identified by client certificates only.
        certificate_role: the role of callers identified by a verified client certificate (mutual TLS),
            named by its common name; None: certificates identify no one.
    """

    def __init__(self, audit: AuditLog, tokens: TokenRegistry | None, *, certificate_role: str | None = None):
        self.audit = audit
        self.tokens = tokens
        self.certificate_role = certificate_role

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(GALLERY_PREFIX) or handler.unary_unary is None:
            return handler
        name = method[len(GALLERY_PREFIX):]
        metadata = handler_call_details.invocation_metadata

        def guarded(raw: bytes, context: grpc.ServicerContext):
            start = time.monotonic()
            entry = {"method": name, "identity": "unauthenticated", "peer": context.peer()}
            response, refused = None, None
            try:
                principal = self._identify(metadata, context)
                entry["identity"], entry["role"] = principal.name, principal.role
                request = _decode(handler.request_deserializer, raw, name)
                entry.update(_request_fields(request))
                _authorize(principal, name, request)
                _check_accountable(name, request)
                response = handler.unary_unary(request, context)
                if name == "ListCollections":
                    _keep_covered(response, principal)
                entry.update(code="OK", **_response_fields(request, response))
            except _Refused as e:
                refused = e
                entry.update(code=e.code.name, details=e.details)
            except BaseException as e:
                code = context.code() if hasattr(context, "code") else None
                entry["code"] = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                entry["details"] = str(context.details() or e)[:500] if hasattr(context, "details") else str(e)[:500]
                self._write(entry, start, context)
                raise
            self._write(entry, start, context)
            if refused is not None:
                context.abort(refused.code, refused.details)
            return response

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=None,
                                                   response_serializer=handler.response_serializer)

    def _identify(self, metadata, context: grpc.ServicerContext) -> Principal:
        for key, value in metadata or ():
            if key == "authorization":
                if value.startswith("Bearer ") and self.tokens is not None:
                    try:
                        principal = self.tokens.authenticate(value[len("Bearer "):])
                    except Exception as e:  # the registry could not be read: say so, do not let anyone in
                        raise _Refused(grpc.StatusCode.UNAVAILABLE, f"token registry unavailable: {e}") from e
                    if principal is not None:
                        return principal
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not one this server knows")
        common_name = _certificate_name(context)
        if common_name and self.certificate_role:
            return Principal(common_name, self.certificate_role)
        raise _Refused(grpc.StatusCode.UNAUTHENTICATED,
                       "send 'authorization: Bearer <token>' metadata with a token this server knows "
                       "(`gallery token create`), or a client certificate the server trusts")

    def _write(self, entry: dict, start: float, context: grpc.ServicerContext) -> None:
        entry["elapsed_ms"] = elapsed_ms(start)
        try:
            self.audit.record(entry)
        except AuditUnavailable as e:  # fail closed: what is not recorded is not answered
            logger.error("refusing %s: %s", entry["method"], e)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the audit log cannot record this call, so it is not "
                                                       "answered; retry later")


def _decode(deserializer, raw: bytes, name: str):
    try:
        return deserializer(raw) if deserializer else raw
    except Exception as e:  # protobuf's DecodeError, invalid UTF-8 in a string, nesting too deep, …
        raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"the {name} request does not parse as its message: "
                                                        f"{type(e).__name__}") from e


def _authorize(principal: Principal, name: str, request) -> None:
    try:
        authorize(principal, name, request)
    except PermissionDenied as e:
        raise _Refused(grpc.StatusCode.PERMISSION_DENIED, str(e)) from e


def _keep_covered(response, principal: Principal) -> None:
    """ListCollections shows only the collections the caller's token covers."""
    hidden = [c for c in response.collections if not principal.covers(c.collection_id)]
    for description in hidden:
        response.collections.remove(description)


def _check_accountable(name: str, request) -> None:
    if name not in ACCOUNTABLE:
        return
    for field in ("purpose", "case_id"):
        value = getattr(request, field, "")
        if not value.strip():
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field} is required for {name}: state why this "
                                                            "search is made and for which case; it is audited")
        if len(value) > MAX_PURPOSE_LENGTH:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{field}: at most {MAX_PURPOSE_LENGTH} characters, got {len(value)}")


def _certificate_name(context: grpc.ServicerContext) -> str:
    """The common name of a verified client certificate (mutual TLS), "" without one."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else ""


def _probe_fingerprint(request) -> str:
    """SHA-256 over what the caller searched with: embeddings, image bytes or names; never kept in clear."""
    digest = hashlib.sha256()
    for query in getattr(request, "queries", ()):
        digest.update(query.values)
    for field in ("image", "source_image", "target_image"):
        if field in request.DESCRIPTOR.fields_by_name and request.HasField(field):
            image = getattr(request, field)
            digest.update(image.bytes if image.HasField("bytes") else image.s3_object.SerializeToString())
    if getattr(request, "face_id", ""):
        digest.update(request.face_id.encode())
    return digest.hexdigest()


def _request_fields(request) -> dict:
    fields = {name: getattr(request, name) for name in ("collection_id", "purpose", "case_id", "face_id",
                                                         "external_image_id")
              if getattr(request, name, "")}
    for name in ("queries", "faces", "face_ids"):
        if hasattr(request, name) and len(getattr(request, name)):
            fields[f"num_{name}"] = len(getattr(request, name))
    if type(request).__name__ in {f"{m}Request" for m in ACCOUNTABLE}:
        fields["probe_sha256"] = _probe_fingerprint(request)
    return fields


def _response_fields(request, response) -> dict:
    """The candidates the caller was shown (face id, similarity, gallery false-match probability) and the
    similarity threshold they passed."""
    if hasattr(response, "face_matches"):
        lists = [[(round(m.similarity, 4), m.false_match_rate) for m in response.face_matches]]
    elif getattr(request, "ids_only", False) and response.HasField("packed"):
        packed = response.packed
        lists = _shown(list(packed.face_ids), np.frombuffer(packed.similarities, dtype="<f4"),
                       np.frombuffer(packed.gallery_false_match_probabilities, dtype="<f8"), packed.counts)
    elif hasattr(response, "results") or hasattr(response, "candidates"):
        per_query = ([r.candidates for r in response.results] if hasattr(response, "results")
                     else [response.candidates])
        candidates = [c for query in per_query for c in query]
        lists = _shown([c.face.face_id for c in candidates], [c.similarity for c in candidates],
                       [c.gallery_false_match_probability for c in candidates], [len(q) for q in per_query])
    else:
        return {}
    fields = {"candidates": lists}
    if getattr(response, "partial", False):  # the caller was shown candidates of only some partitions
        fields.update(partial=True, missing_partitions=list(response.missing_partitions))
    fields["threshold"] = round(response.threshold_used, 6)
    if getattr(request, "target_fpir", 0.0):
        fields["target_fpir"] = request.target_fpir
    return fields


def _shown(face_ids: list[str], similarities, probabilities, counts) -> list[list[tuple]]:
    """Candidates as the audit log records every search's: per query, best first, (face id, similarity to four
    decimals, gallery false-match probability to four significant digits), rounded with whole arrays: short
    numbers take the audit writer about half the time of full-precision ones (benchmarks/README.md)."""
    rounded_similarities = np.round(np.asarray(similarities, dtype=np.float64), 4).tolist()
    rounded_probabilities = _significant(np.asarray(probabilities, dtype=np.float64), 4).tolist()
    shown = list(zip(face_ids, rounded_similarities, rounded_probabilities))
    ends = np.cumsum(np.asarray(counts, dtype=np.int64)).tolist()
    return [shown[start:end] for start, end in zip([0] + ends[:-1], ends)]


def _significant(values: np.ndarray, digits: int) -> np.ndarray:
    """`values` rounded to `digits` significant digits (0, and what is too small to scale, kept as is)."""
    magnitude = np.abs(values)
    exponent = np.floor(np.log10(np.where(magnitude > 0, magnitude, 1.0)))
    with np.errstate(over="ignore", invalid="ignore"):
        scale = 10.0 ** (digits - 1 - exponent)
        rounded = np.round(values * scale) / scale
    return np.where(np.isfinite(rounded), rounded, values)
