"""Server interceptors: who is calling (bearer tokens) and what they did (the audit log).

Health and reflection are open to all; every gallery.v1 call needs a known
token when tokens are configured, and every one is audited, refused or not.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import grpc

from cluster.serve.audit import AuditLog, elapsed_ms

logger = logging.getLogger(__name__)

GALLERY_PREFIX = "/gallery.v1.Gallery/"
ANONYMOUS = "anonymous"


def load_tokens(path: str) -> dict[str, str]:
    """Reads {"<token>": "<caller identity>", …} from a JSON file."""
    tokens = json.loads(pathlib.Path(path).read_text())
    if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
        raise ValueError(f"{path}: expected a JSON object mapping tokens to caller identities")
    return tokens


def caller_identity(metadata, tokens: dict[str, str] | None) -> str | None:
    """The identity of the bearer token in `metadata`; ANONYMOUS without tokens configured; None if unknown."""
    if tokens is None:
        return ANONYMOUS
    for key, value in metadata or ():
        if key == "authorization" and value.startswith("Bearer "):
            return tokens.get(value[len("Bearer "):])
    return None


def _wrap_unary(handler: grpc.RpcMethodHandler, behaviour) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(behaviour, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses gallery.v1 calls without a known bearer token (UNAUTHENTICATED)."""

    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(GALLERY_PREFIX):
            return handler
        if caller_identity(handler_call_details.invocation_metadata, self.tokens) is not None:
            return handler

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "send 'authorization: Bearer <token>' metadata with a token this server knows")

        return _wrap_unary(handler, refuse)


class AuditInterceptor(grpc.ServerInterceptor):
    """Writes one audit record per gallery.v1 call: caller, purpose, collection, outcome, candidates shown."""

    def __init__(self, log: AuditLog, tokens: dict[str, str] | None = None):
        self.log = log
        self.tokens = tokens

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(GALLERY_PREFIX) or handler.unary_unary is None:
            return handler
        identity = caller_identity(handler_call_details.invocation_metadata, self.tokens)

        def audited(request, context):
            start = time.monotonic()
            entry = {"method": method[len(GALLERY_PREFIX):], "identity": identity or "unauthenticated",
                     "peer": context.peer(), **_request_fields(request)}
            try:
                response = handler.unary_unary(request, context)
                entry.update(code="OK", **_response_fields(response))
                return response
            except BaseException:
                code = context.code() if hasattr(context, "code") else None
                entry["code"] = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                entry["elapsed_ms"] = elapsed_ms(start)
                self.log.record(entry)

        return _wrap_unary(handler, audited)


def _request_fields(request) -> dict:
    fields = {name: getattr(request, name) for name in ("collection_id", "purpose", "face_id", "external_image_id")
              if getattr(request, name, "")}
    for name in ("queries", "faces", "face_ids"):
        if hasattr(request, name) and len(getattr(request, name)):
            fields[f"num_{name}"] = len(getattr(request, name))
    return fields


def _response_fields(response) -> dict:
    """The candidates the caller was shown: (face id, similarity, gallery false-match probability)."""
    lists = []
    if hasattr(response, "candidates") and not hasattr(response, "results"):
        lists = [response.candidates]
    elif hasattr(response, "results"):
        lists = [getattr(r, "candidates", []) for r in response.results]
    if not lists:
        return {}
    return {"candidates": [[(c.face.face_id, round(c.similarity, 4), c.gallery_false_match_probability)
                            for c in candidates] for candidates in lists]}
