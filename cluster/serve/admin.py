"""`gallery token …` and `gallery audit …`: managing callers and reading the audit log, straight from the store.

These act on the store, not through the gateway: they need the store's credentials, which is the point
(an operator's tool, not a caller's).
"""

from __future__ import annotations

import json

from cluster.serve import audit as audit_log
from cluster.serve.tokens import TokenRegistry
from cluster.storage.object_store import ObjectStore


def _open(store: str, s3_endpoint: str) -> ObjectStore:
    return ObjectStore(store, s3_endpoint=s3_endpoint or None)


def token_create(store: str, name: str, role: str, collections: str = "*", s3_endpoint: str = "") -> str:
    """Creates a token and prints it, once; only its SHA-256 is kept.

    Args:
        store: the gallery's object store (a folder or s3://bucket/prefix).
        name: who the token is for (a person, a service); shown in the audit log.
        role: admin, enroller, searcher or auditor.
        collections: comma-separated collection ids the token covers, or * for all.
        s3_endpoint: S3 endpoint URL for S3-compatible stores.
    """
    covered = [c.strip() for c in collections.split(",") if c.strip()]
    token = TokenRegistry(_open(store, s3_endpoint)).create(name, role, covered)
    print(token)
    return token


def token_list(store: str, s3_endpoint: str = "") -> list[dict]:
    """Lists the tokens: name, role, collections, creation time and the start of each hash (never the token).

    Args:
        store: the gallery's object store (a folder or s3://bucket/prefix).
        s3_endpoint: S3 endpoint URL for S3-compatible stores.
    """
    rows = [{"name": e.name, "role": e.role, "collections": e.collections, "created_at": e.created_at,
             "sha256": e.sha256[:12]} for e in TokenRegistry(_open(store, s3_endpoint)).list()]
    for row in rows:
        print(json.dumps(row))
    return rows


def token_revoke(store: str, name: str, s3_endpoint: str = "") -> bool:
    """Revokes the named token; a running gateway refuses it within a second.

    Args:
        store: the gallery's object store (a folder or s3://bucket/prefix).
        name: the token's name.
        s3_endpoint: S3 endpoint URL for S3-compatible stores.
    """
    revoked = TokenRegistry(_open(store, s3_endpoint)).revoke(name)
    if not revoked:
        raise ValueError(f"no token named {name!r}")
    print(f"revoked {name}")
    return revoked


def audit_verify(store: str, expected_head: str = "", s3_endpoint: str = "") -> audit_log.Verification:
    """Checks the audit log's hash chain; prints the head to keep elsewhere, and every break found.

    Args:
        store: where the audit log is (the gallery's store, or its --audit-store).
        expected_head: the head printed by an earlier verify (JSON); default the store's own audit/HEAD.
        s3_endpoint: S3 endpoint URL for S3-compatible stores.
    """
    head = audit_log.Head.from_json(expected_head.encode()) if expected_head else None
    result = audit_log.verify(_open(store, s3_endpoint), expected_head=head)
    for problem in result.problems:
        print(f"BROKEN: {problem}")
    print(f"{'intact' if result.intact else 'NOT intact'}: {result.records} records in {result.objects} objects; "
          f"head {result.head.to_json().decode()}")
    return result


def audit_query(store: str, since: str = "", until: str = "", identity: str = "", collection_id: str = "",
                case_id: str = "", limit: int = 100, s3_endpoint: str = "") -> list[dict]:
    """Prints the matching audit records, one JSON line each, oldest first.

    Args:
        store: where the audit log is (the gallery's store, or its --audit-store).
        since: ISO 8601 time (UTC), inclusive.
        until: ISO 8601 time (UTC), exclusive.
        identity: only this caller's records.
        collection_id: only this collection's records.
        case_id: only this case's records.
        limit: records at most.
        s3_endpoint: S3 endpoint URL for S3-compatible stores.
    """
    records = list(audit_log.query(_open(store, s3_endpoint), since=since, until=until,
                                   identity=identity, collection_id=collection_id, case_id=case_id, limit=limit))
    for record in records:
        print(json.dumps(record))
    return records
