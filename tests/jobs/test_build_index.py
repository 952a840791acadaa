"""Index building through the gateway's BuildIndex RPC, while searches go on."""

from __future__ import annotations

import threading

import grpc
import pytest
from gallery.v1 import gallery_pb2 as pb

from cluster.client import GalleryClient
from cluster.index import tuning
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.audit import AuditLog
from cluster.serve.interceptors import TrustInterceptor
from cluster.serve.server import running_server
from cluster.serve.tokens import TokenRegistry
from jobs.build_index import build_index

D = 32


@pytest.fixture
def gateway(gallery):
    with running_server(gallery, "127.0.0.1:0") as (_, port):
        yield f"127.0.0.1:{port}"


def test_build_index_when_due_while_searching(gateway):
    xb = clustered_embeddings(900, D, seed=5)
    with GalleryClient(gateway) as client:
        client.create_collection("c", dimension=D, train_threshold=300)
        client.add("c", [f"f{i}" for i in range(200)], xb[:200])

        assert not build_index("c", gateway).built  # under the train threshold
        with pytest.raises(grpc.RpcError) as e:
            client.build_index("c")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "256" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            client.build_index("nope")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

        client.add("c", [f"f{i}" for i in range(200, 400)], xb[200:400])  # the gateway starts training by itself
        result = build_index("c", gateway)  # waits for it, and then has nothing to do
        assert not result.built and result.trained_on == 400

        client.add("c", [f"f{i}" for i in range(400, 900)], xb[400:])  # 2.25x: due for the job, not the gateway
        assert client.describe("c").trained_on == 400
        searched, failures, stop = [], [], threading.Event()

        def search() -> None:
            with GalleryClient(gateway) as searcher:
                while not stop.is_set():
                    try:
                        _, ids = searcher.search("c", xb[:8], k=5, purpose="test", case_id="t-1")
                        searched.append(all(len(found) == 5 for found in ids))
                    except grpc.RpcError as error:
                        failures.append(error.code())

        thread = threading.Thread(target=search)
        thread.start()
        try:
            result = build_index("c", gateway)
        finally:
            stop.set()
            thread.join()

        assert result.built and result.trained_on == 900 and result.nlist == tuning.nlist_for(900)
        assert failures == [] and searched and all(searched)
        described = client.describe("c")
        assert described.index_state == pb.INDEX_STATE_IVF_PQ and described.trained_on == 900
        _, ids = client.search("c", xb[[3, 500]], k=1, purpose="test", case_id="t-1")
        assert [found[0] for found in ids] == ["f3", "f500"]
        assert build_index("c", gateway, force=True).reason == "forced"


def test_build_index_checks_its_arguments(gateway):
    with pytest.raises(ValueError, match="min_growth"):
        build_index("c", gateway, min_growth=0.5)


def test_jobs_send_the_token_from_the_environment(gallery, monkeypatch):
    token = TokenRegistry(gallery.store).create("enroll-job", "enroller")
    audit = AuditLog(gallery.store)
    with running_server(gallery, "127.0.0.1:0", interceptors=[TrustInterceptor(audit, TokenRegistry(gallery.store))]
                        ) as (_, port):
        with pytest.raises(grpc.RpcError) as e:
            build_index("c", f"127.0.0.1:{port}")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        monkeypatch.setenv("GALLERY_AUTH_TOKEN", token)
        with pytest.raises(grpc.RpcError) as e:
            build_index("c", f"127.0.0.1:{port}")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND  # past authentication
    audit.close()
