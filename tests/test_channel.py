"""The gateway-to-worker search channel on its own: replies, errors with their types, keys, deadlines, breaks."""

import multiprocessing
import threading
import time
from multiprocessing.connection import AuthenticationError, Client

import pytest

from cluster.index.shard_index import StaleIndexVersion
from cluster.shards.channel import ChannelClosed, ChannelPool, ChannelServer, exchange

NODE = "node-a"


def handler(request: bytes) -> bytes:
    if request == b"stale":
        raise StaleIndexVersion("partition 0 serves index version 2, asked 1")
    if request.startswith(b"sleep"):
        time.sleep(float(request[5:]))
    return request[::-1]


@pytest.fixture
def servers():
    started = [ChannelServer(handler, node_id=NODE, host="127.0.0.1") for _ in range(2)]
    yield started
    for server in started:
        server.close()


@pytest.mark.parametrize("node_id", [NODE, "another-node"], ids=["unix socket", "tcp"])
def test_every_worker_answers_in_order_on_reused_connections(servers, node_id):
    pools = [ChannelPool(server.address_for(node_id), node_id) for server in servers]
    first = None
    for request in (b"abc", b"x" * 3_000_000):
        connections = [pool.take() for pool in pools]
        first = first or connections
        assert all(c is f for c, f in zip(connections, first))  # given back, then taken again: not reopened
        assert [bytes(r) for r in exchange(connections, request, 5)] == [request[::-1]] * 2
        for pool, connection in zip(pools, connections):
            pool.give_back(connection)


def test_tcp_opens_only_for_gateways_on_other_nodes(servers):
    assert servers[0].address_for(NODE).tcp is None
    host, port = servers[0].address_for("another-node").tcp
    assert host == "127.0.0.1" and port > 0
    assert servers[0].address_for(NODE).tcp == (host, port)


def test_a_worker_error_comes_back_with_its_type_and_leaves_connections_usable(servers):
    pools = [ChannelPool(server.address_for(NODE), NODE) for server in servers]
    connections = [pool.take() for pool in pools]
    with pytest.raises(StaleIndexVersion, match="asked 1"):
        exchange(connections, b"stale", 5)
    assert [bytes(r) for r in exchange(connections, b"ok", 5)] == [b"ko", b"ko"]


def test_concurrent_callers_get_their_own_replies(servers):
    pool = ChannelPool(servers[0].address_for(NODE), NODE)
    errors = []

    def caller(i: int) -> None:
        for j in range(50):
            connection = pool.take()
            request = f"{i}-{j}".encode()
            if bytes(exchange([connection], request, 5)[0]) != request[::-1]:
                errors.append((i, j))
            pool.give_back(connection)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_wrong_key_is_refused(servers):
    address = servers[0].address_for(NODE)
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(address.unix_address, family="AF_UNIX", authkey=b"not the key")
    connection = ChannelPool(address, NODE).take()  # the server still serves the right key
    assert bytes(exchange([connection], b"ab", 5)[0]) == b"ba"


def test_a_slow_worker_times_out(servers):
    connection = ChannelPool(servers[0].address_for(NODE), NODE).take()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        exchange([connection], b"sleep0.5", 0.05)
    assert time.monotonic() - started < 0.4


def _serve_in_a_process(addresses) -> None:
    addresses.put(ChannelServer(handler, node_id=NODE, host="127.0.0.1").address_for(NODE))
    time.sleep(60)


def test_a_dead_worker_is_a_closed_channel():
    addresses = multiprocessing.Queue()
    worker = multiprocessing.Process(target=_serve_in_a_process, args=(addresses,), daemon=True)
    worker.start()
    pool = ChannelPool(addresses.get(timeout=10), NODE)
    connection = pool.take()
    assert bytes(exchange([connection], b"ab", 5)[0]) == b"ba"
    worker.kill()
    worker.join()
    with pytest.raises(ChannelClosed):
        exchange([connection], b"ab", 5)
    with pytest.raises(ChannelClosed):
        pool.take()  # nobody listens any more
