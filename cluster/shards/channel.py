"""Direct connections from the gateway to the shard workers, for searches; Ray keeps the workers' lifecycle.

A Ray actor call costs the gateway about a millisecond of CPU in Ray's native
threads, a large share of the latency budget of a batch-1 query
(benchmarks/README.md). So each ShardWorker also serves searches on sockets
of its own: a Unix socket for gateways on its node (in Linux's abstract
namespace, so it is shared by the containers of a pod and vanishes with the
process) and, opened when a gateway on another node asks, TCP on its node's
address. Connections are authenticated with a random key per worker
process (the HMAC challenge of `multiprocessing.connection`) that the gateway
learns through a Ray call: only a holder of the actor handle can connect.

Messages are length-prefixed bytes. A reply starts with one status byte:
`OK` and the handler's bytes, or `ERROR` and the pickled exception, re-raised
in the gateway with its type (e.g. StaleIndexVersion).
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge

logger = logging.getLogger(__name__)

OK, ERROR = b"\x00", b"\x01"


class ChannelClosed(ConnectionError):
    """The worker's end went away (it crashed or is restarting); Ray's actor calls still reach it."""


@dataclass(frozen=True)
class ChannelAddress:
    """Where a worker process listens, and the key that opens it."""

    node_id: str  # Ray node of the worker
    unix_address: str  # for gateways on that node
    tcp: tuple[str, int] | None  # for gateways on other nodes
    authkey: bytes

    def connect(self, node_id: str) -> Connection:
        """Opens a connection from a process on Ray node `node_id`."""
        if node_id == self.node_id:
            return Client(self.unix_address, family="AF_UNIX", authkey=self.authkey)
        if self.tcp is None:
            raise ChannelClosed(f"this address is for gateways on node {self.node_id}; ask the worker for one "
                                f"for node {node_id}")
        return Client(self.tcp, family="AF_INET", authkey=self.authkey)


class ChannelServer:
    """Answers `handler(request) -> reply` on authenticated connections, one thread per connection.

    Args:
        handler: bytes in, bytes out; an exception it raises is sent back to the caller.
        node_id: the Ray node this process runs on.
        host: address to bind the TCP listener to: the node's address in the Ray cluster.
    """

    def __init__(self, handler: Callable[[bytes], bytes], *, node_id: str, host: str):
        self._handler = handler
        self.node_id = node_id
        self._host = host
        self._authkey = secrets.token_bytes(32)
        self._closed = False
        self._lock = threading.Lock()
        self._unix = self._listen(Listener(_unix_address(), family="AF_UNIX"))
        self._tcp: Listener | None = None

    def address_for(self, node_id: str) -> ChannelAddress:
        """Where a gateway on Ray node `node_id` connects: the Unix socket, or TCP from another node."""
        if node_id != self.node_id:
            with self._lock:
                if self._tcp is None:
                    self._tcp = self._listen(Listener((self._host, 0), family="AF_INET"))
        return ChannelAddress(self.node_id, self._unix.address, self._tcp and self._tcp.address, self._authkey)

    def close(self) -> None:
        self._closed = True
        for listener in (self._unix, self._tcp):
            if listener is not None:
                listener.close()

    def _listen(self, listener: Listener) -> Listener:
        # Listener(authkey=...) would run the handshake inside accept(): a peer that stalled it would stop
        # every later connection. Each connection's own thread runs it instead.
        threading.Thread(target=self._accept, args=(listener,), name="channel-accept", daemon=True).start()
        return listener

    def _accept(self, listener: Listener) -> None:
        while not self._closed:
            try:
                connection = listener.accept()
            except OSError as e:
                if not self._closed:  # e.g. out of file descriptors
                    logger.warning("channel: accept failed: %s", e)
                    time.sleep(0.1)
                continue
            threading.Thread(target=self._serve, args=(connection,), name="channel-serve", daemon=True).start()

    def _serve(self, connection: Connection) -> None:
        with connection:
            try:
                deliver_challenge(connection, self._authkey)
                answer_challenge(connection, self._authkey)
            except (AuthenticationError, OSError, EOFError) as e:
                logger.warning("channel: refused a connection: %s", e)
                return
            while True:
                try:
                    request = connection.recv_bytes()
                except (EOFError, OSError):
                    return
                try:
                    reply = OK + self._handler(request)
                except Exception as e:
                    reply = ERROR + _pickled_error(e)
                try:
                    connection.send_bytes(reply)
                except OSError:
                    return


def _unix_address() -> str:
    name = f"gallery-search-{secrets.token_hex(8)}"
    if sys.platform == "linux":
        return "\0" + name
    return os.path.join(tempfile.gettempdir(), f"{name}.sock")


def _pickled_error(e: Exception) -> bytes:
    try:
        data = pickle.dumps(e)
        pickle.loads(data)  # some exceptions pickle but cannot be rebuilt
        return data
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(e).__name__}: {e}"))


class ChannelPool:
    """Open connections to one worker; a caller takes one for a request and gives it back after the reply.

    Args:
        address: the worker's listeners.
        node_id: the Ray node of this (the gateway's) process.
    """

    def __init__(self, address: ChannelAddress, node_id: str):
        self.address = address
        self._node_id = node_id
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self.closed = False

    def take(self) -> Connection:
        with self._lock:
            if self.closed:
                raise ChannelClosed("channel closed")
            if self._idle:
                return self._idle.pop()
        try:
            return self.address.connect(self._node_id)
        except (OSError, EOFError, AuthenticationError) as e:
            raise ChannelClosed(f"cannot connect to worker on node {self.address.node_id}: {e}") from e

    def give_back(self, connection: Connection) -> None:
        with self._lock:
            if not self.closed:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def exchange(connections: list[Connection], request: bytes, timeout_s: float) -> list[memoryview]:
    """Sends `request` on every connection, then waits for each reply.

    Raises:
        TimeoutError: a reply did not come in time (the connections are then unusable).
        ChannelClosed: a connection broke.
        Exception: the first error a worker's handler raised, after every reply was read.
    """
    deadline = time.monotonic() + timeout_s
    replies = []
    try:
        for connection in connections:
            connection.send_bytes(request)
        for connection in connections:
            if not connection.poll(max(0.0, deadline - time.monotonic())):
                break
            replies.append(connection.recv_bytes())
    except (OSError, EOFError) as e:
        raise ChannelClosed(str(e)) from e
    if len(replies) < len(connections):
        raise TimeoutError(f"no reply within {timeout_s:.3f} s")
    for reply in replies:
        if reply[:1] == ERROR:
            raise pickle.loads(reply[1:])
    return [memoryview(reply)[1:] for reply in replies]
