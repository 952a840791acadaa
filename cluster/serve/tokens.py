"""Bearer tokens: who a caller is, the role they have and the collections it covers.

The registry lives in the store (`auth/tokens.json`) and holds only the SHA-256 of each token: a copy of
the store does not let anyone call the gateway. A token is shown once, when it is created. The gateway
reads the registry again when it meets a token it does not know (at most once a second), so tokens
created or revoked with `gallery token` take effect without a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field

from cluster.storage.object_store import ObjectStore

REGISTRY_KEY = "auth/tokens.json"
ROLES = ("admin", "enroller", "searcher", "auditor")
ALL_COLLECTIONS = "*"
_RELOAD_INTERVAL_S = 1.0


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: str
    collections: tuple[str, ...] = (ALL_COLLECTIONS,)

    def covers(self, collection_id: str) -> bool:
        return ALL_COLLECTIONS in self.collections or collection_id in self.collections


@dataclass
class TokenEntry:
    name: str
    role: str
    collections: list[str] = field(default_factory=lambda: [ALL_COLLECTIONS])
    sha256: str = ""
    created_at: float = 0.0

    def principal(self) -> Principal:
        return Principal(self.name, self.role, tuple(self.collections))


class TokenRegistry:
    """The store's tokens, by hash.

    Example:
        >>> tokens = TokenRegistry(ObjectStore("./gallery-data"))
        >>> secret = tokens.create("door-3", "searcher", ["staff"])   # shown once
        >>> tokens.authenticate(secret)
        Principal(name='door-3', role='searcher', collections=('staff',))
    """

    def __init__(self, store: ObjectStore):
        self.store = store
        self._lock = threading.Lock()
        self._by_hash: dict[str, TokenEntry] = {}
        self._loaded_at = -_RELOAD_INTERVAL_S
        self._reload()

    def _read(self) -> list[TokenEntry]:
        try:
            raw = json.loads(self.store.get(REGISTRY_KEY))
        except FileNotFoundError:
            return []
        return [TokenEntry(**entry) for entry in raw["tokens"]]

    def _reload(self) -> None:
        entries = self._read()
        with self._lock:
            self._by_hash = {e.sha256: e for e in entries}
            self._loaded_at = time.monotonic()

    def authenticate(self, token: str) -> Principal | None:
        """The caller a token names; None for an unknown or revoked token."""
        if time.monotonic() - self._loaded_at >= _RELOAD_INTERVAL_S:  # created or revoked since the last read
            self._reload()
        entry = self._by_hash.get(token_hash(token))
        return entry.principal() if entry else None

    def list(self) -> list[TokenEntry]:
        return sorted(self._read(), key=lambda e: e.name)

    def create(self, name: str, role: str, collections: list[str] | None = None) -> str:
        """Adds a token and returns it: the only time it is seen in clear.

        Raises:
            ValueError: an unknown role, an empty name, or a name already in use.
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
        if not name:
            raise ValueError("name: give the caller a name (a person, a service)")
        entries = self._read()
        if any(e.name == name for e in entries):
            raise ValueError(f"a token named {name!r} exists: revoke it first, or choose another name")
        token = secrets.token_urlsafe(32)
        entries.append(TokenEntry(name, role, list(collections or [ALL_COLLECTIONS]), token_hash(token), time.time()))
        self._write(entries)
        return token

    def revoke(self, name: str) -> bool:
        """Removes the named token; False when there is none."""
        entries = self._read()
        kept = [e for e in entries if e.name != name]
        if len(kept) == len(entries):
            return False
        self._write(kept)
        return True

    def _write(self, entries: list[TokenEntry]) -> None:
        self.store.put(REGISTRY_KEY, json.dumps({"tokens": [asdict(e) for e in entries]}, indent=1).encode())
        self._reload()


def admin_token_path(store_uri: str) -> str:
    """Where the embedded default keeps its admin token: beside a local store, else in this folder."""
    if "://" in store_uri and not store_uri.startswith("file://"):
        return os.path.abspath("gallery-admin-token")
    folder = os.path.abspath(os.path.expanduser(store_uri.removeprefix("file://")))
    return folder.rstrip("/") + ".admin-token"


def ensure_admin_token(tokens: TokenRegistry, path: str) -> bool:
    """Creates the admin token and writes it to `path` (mode 0600) when the store has no admin yet.

    Returns:
        True when a token was created now.
    """
    if any(e.role == "admin" for e in tokens.list()):
        return False
    token = tokens.create("admin", "admin")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return True
