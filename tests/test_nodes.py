"""Several Ray nodes on one machine (`ray.cluster_utils.Cluster`: a raylet each, as Ray's own fault-tolerance
tests run them) behind one `gallery serve --replicas 2`: a node removed under sustained searches fails no
query, and full replication is back within 60 s."""

import threading
import time

import grpc
import numpy as np
import pytest
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from ray.cluster_utils import Cluster
from support import QUICK_NODE_FAILURE, Served, shard_worker_pids

from cluster.api import convert
from cluster.index.synthetic import clustered_embeddings


@pytest.fixture
def nodes():
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * 2**20, "_system_config": QUICK_NODE_FAILURE})
    try:
        for _ in range(3):
            cluster.add_node(num_cpus=2, object_store_memory=80 * 2**20)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_a_node_removed_under_searches_fails_no_query_with_two_replicas(nodes, tmp_path):
    served = Served(tmp_path / "store", tmp_path / "serve.log", flags=(
        "--ray-address", nodes.address, "--num-shards", "2", "--replicas", "2", "--shard-num-cpus", "1",
        "--face-workers", "0", "--metrics-port", "0"))
    try:
        stub = gallery_pb2_grpc.GalleryStub(served.channel)
        md = served.metadata
        xb = clustered_embeddings(400, 16, seed=81)
        stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=16), metadata=md)
        stub.AddEmbeddings(pb.AddEmbeddingsRequest(collection_id="c", faces=[
            pb.NewFace(face_id=f"f{i}", embedding=convert.embedding(x)) for i, x in enumerate(xb)]), metadata=md)
        describe = pb.DescribeCollectionRequest(collection_id="c")
        assert stub.DescribeCollection(describe, metadata=md).live_replicas == 2
        xq = xb[:20]
        request = pb.SearchByEmbeddingRequest(collection_id="c", k=3, queries=[convert.embedding(x) for x in xq],
                                              purpose="test", case_id="nodes")
        workers = {node: len(shard_worker_pids(node)) for node in nodes.worker_nodes}
        assert sum(workers.values()) == 4 and max(workers.values()) <= 2, workers  # 2 workers × 2 copies
        victim = max(workers, key=workers.get)

        answered, failed, stop = [], [], threading.Event()

        def search_without_pause():
            while not stop.is_set():
                try:
                    response = stub.SearchByEmbedding(request, metadata=md, timeout=10)
                    answered.append([r.candidates[0].face.face_id for r in response.results])
                except grpc.RpcError as e:
                    failed.append((e.code(), e.details()))

        searchers = [threading.Thread(target=search_without_pause) for _ in range(3)]
        for t in searchers:
            t.start()
        try:
            time.sleep(2)
            before = len(answered)
            nodes.remove_node(victim, allow_graceful=False)
            removed_at = time.monotonic()
            lost_seen = False
            while time.monotonic() - removed_at < 90:
                live = stub.DescribeCollection(describe, metadata=md, timeout=10).live_replicas
                lost_seen |= live < 2
                if lost_seen and live == 2:
                    break
                time.sleep(0.25)
            recovery_s = time.monotonic() - removed_at
            time.sleep(2)
        finally:
            stop.set()
            for t in searchers:
                t.join()
        assert lost_seen, "the gateway never saw a copy missing"
        assert failed == [], f"{len(failed)} searches failed: {failed[:3]}"
        assert len(answered) > before + 10
        assert all(a == [f"f{i}" for i in range(20)] for a in answered)  # every answer whole and right
        assert recovery_s <= 60, f"full replication back after {recovery_s:.0f} s"
        assert sum(len(shard_worker_pids(node)) for node in nodes.worker_nodes if node is not victim) == 4
        got = stub.SearchByEmbedding(request, metadata=md, timeout=10)
        np.testing.assert_allclose([r.candidates[0].similarity for r in got.results], 1.0, atol=1e-3)
    finally:
        served.stop()
