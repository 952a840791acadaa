"""A cluster that heals itself: a worker Ray gave up on is created anew, searches say UNAVAILABLE meanwhile
(never INTERNAL, never late), health says NOT_SERVING, and interrupted training resumes on its own."""

import time

import grpc
import numpy as np
import pytest
import ray
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import wait_until

from cluster.api import convert
from cluster.index.synthetic import clustered_embeddings
from cluster.serve.server import running_server
from cluster.storage.records import FaceRecord

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _ids(results):
    return [[c.record.face_id for c in q] for q in results.candidates]


@pytest.mark.slow
def test_a_worker_ray_gave_up_on_is_created_anew_and_serves_everything_again(galleries, tmp_path):
    gallery = galleries.start(str(tmp_path), num_workers=2)
    xb = clustered_embeddings(400, 16, seed=61)
    gallery.create_collection("c", dimension=16)
    gallery.add("c", [FaceRecord(f"f{i}") for i in range(400)], xb)
    expected = _ids(gallery.search("c", xb[:30], 5))
    with running_server(gallery) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = gallery_pb2_grpc.GalleryStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="gallery.v1.Gallery")).status == SERVING

        ray.kill(gallery.shards.workers[1], no_restart=True)  # what Ray does once it stops restarting an actor

        request = pb.SearchByEmbeddingRequest(collection_id="c", k=5, queries=[convert.embedding(xb[0])])
        codes, slowest_s = set(), 0.0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                stub.SearchByEmbedding(request, timeout=5)
                codes.add(grpc.StatusCode.OK)
                if gallery.shards.replacements:
                    break
            except grpc.RpcError as e:
                codes.add(e.code())
            slowest_s = max(slowest_s, time.monotonic() - started)
            if grpc.StatusCode.UNAVAILABLE in codes and not gallery.shards.replacements:
                status = health.Check(health_pb2.HealthCheckRequest(service="gallery.v1.Gallery")).status
                codes.add(("health", status))
            time.sleep(0.2)
        assert gallery.shards.replacements == 1, "the worker was not created anew within 90 s"
        assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK, ("health", NOT_SERVING),
                         ("health", SERVING)}, codes
        assert grpc.StatusCode.UNAVAILABLE in codes and ("health", NOT_SERVING) in codes
        assert slowest_s < 5, "a search waited for the dead worker instead of answering UNAVAILABLE"
        assert _ids(gallery.search("c", xb[:30], 5)) == expected  # the new worker reloaded its partitions
        wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status == SERVING, 30, "health SERVING")


def test_training_a_stop_interrupted_resumes_at_start(galleries, tmp_path):
    xb = clustered_embeddings(1200, 16, seed=62)
    first = galleries.start(str(tmp_path), backend="local", background_maintenance=False,
                            default_train_threshold=1000)
    first.create_collection("c", dimension=16)
    first.add("c", [FaceRecord(f"f{i}") for i in range(1200)], xb)
    assert first.describe("c")[0].index_version == 0  # due, but the gateway stopped before training
    galleries.stop(first)

    again = galleries.start(str(tmp_path), backend="local")
    assert again.wait_for_maintenance("c", timeout_s=120)
    m, _ = again.describe("c")
    assert m.index_version == 1 and m.trained_on == 1200
    assert [q[0] for q in _ids(again.search("c", xb[:20], 1))] == [f"f{i}" for i in range(20)]
    assert np.isfinite([c.similarity for q in again.search("c", xb[:20], 1).candidates for c in q]).all()
