"""Who may call what: each gallery.v1 RPC names the roles that may call it, per collection.

admin may do everything. An enroller manages the faces of its collections and may read their
embeddings, but cannot search. A searcher searches and compares in its collections and reads face
records without embeddings. An auditor reads the audit log. A token covers its collections only
(or all, "*"); a call on any other collection is refused with PERMISSION_DENIED, and ListCollections
shows only the covered ones.
"""

from __future__ import annotations

from cluster.serve.tokens import Principal

ADMIN, ENROLLER, SEARCHER, AUDITOR = "admin", "enroller", "searcher", "auditor"

# RPC name -> roles besides admin that may call it.
PERMISSIONS: dict[str, frozenset[str]] = {
    "CreateCollection": frozenset({ENROLLER}),
    "DescribeCollection": frozenset({ENROLLER, SEARCHER, AUDITOR}),
    "ListCollections": frozenset({ENROLLER, SEARCHER, AUDITOR}),
    "DeleteCollection": frozenset(),
    "AddEmbeddings": frozenset({ENROLLER}),
    "SearchByEmbedding": frozenset({SEARCHER}),
    "ListFaces": frozenset({ENROLLER, SEARCHER}),
    "GetFaces": frozenset({ENROLLER, SEARCHER}),
    "DeleteFaces": frozenset({ENROLLER}),
    "DetectFaces": frozenset({ENROLLER, SEARCHER}),
    "IndexFaces": frozenset({ENROLLER}),
    "SearchFacesByImage": frozenset({SEARCHER}),
    "SearchFaces": frozenset({SEARCHER}),
    "CompareFaces": frozenset({SEARCHER}),
    "BuildIndex": frozenset({ENROLLER}),
    "QueryAuditLog": frozenset({AUDITOR}),
    "SetCalibration": frozenset({ENROLLER}),
}
# Reading embeddings (ListFaces, GetFaces with include_embeddings) needs one of these.
READS_EMBEDDINGS = frozenset({ADMIN, ENROLLER})


class PermissionDenied(Exception):
    """The caller's role or collections do not allow the call."""


def authorize(principal: Principal, method: str, request) -> None:
    """Raises PermissionDenied unless `principal` may make this call with this request."""
    allowed = PERMISSIONS.get(method)
    if allowed is None:
        raise PermissionDenied(f"{method} is not a gallery.v1 method this server authorizes")
    if principal.role != ADMIN and principal.role not in allowed:
        raise PermissionDenied(f"{method} needs the role admin{''.join(f' or {r}' for r in sorted(allowed))}; "
                               f"{principal.name!r} is {principal.role}")
    collection_id = getattr(request, "collection_id", "")
    if collection_id and not principal.covers(collection_id):
        raise PermissionDenied(f"{principal.name!r} has no access to collection {collection_id!r}")
    if getattr(request, "include_embeddings", False) and principal.role not in READS_EMBEDDINGS:
        raise PermissionDenied(f"reading embeddings needs the role admin or enroller; {principal.name!r} is "
                               f"{principal.role}")
