"""Shared fixtures: one private local Ray per test session, galleries on fresh stores, real gRPC servers."""

from __future__ import annotations

import uuid

import grpc
import pytest
import ray

from cluster import runtime
from cluster.gallery import Gallery
from cluster.server import running_server
from cluster.store import ObjectStore
from gallery.v1 import gallery_pb2_grpc


@pytest.fixture(scope="session")
def ray_session():
    runtime.start_ray("local", num_cpus=6)
    yield
    ray.shutdown()


class GalleryFactory:
    """Starts galleries with their own workers; `restart` models stopping and starting the service."""

    def __init__(self):
        self._started: list[tuple[Gallery, list]] = []

    def start(self, store_uri: str, *, num_workers: int = 2, s3_endpoint: str | None = None, **kwargs) -> Gallery:
        workers = runtime.start_workers(num_workers, store_uri, s3_endpoint=s3_endpoint,
                                        cluster_name=f"test-{uuid.uuid4().hex[:8]}", num_cpus=0.5)
        gallery = Gallery(ObjectStore(store_uri, s3_endpoint=s3_endpoint), workers, **kwargs)
        self._started.append((gallery, workers))
        return gallery

    def stop(self, gallery: Gallery) -> None:
        for entry in list(self._started):
            if entry[0] is gallery:
                gallery.close()
                runtime.stop_workers(entry[1])
                self._started.remove(entry)

    def stop_all(self) -> None:
        for gallery, _ in list(self._started):
            self.stop(gallery)


@pytest.fixture
def galleries(ray_session):
    factory = GalleryFactory()
    yield factory
    factory.stop_all()


@pytest.fixture
def gallery(galleries, tmp_path) -> Gallery:
    return galleries.start(str(tmp_path / "store"))


@pytest.fixture
def channel(gallery):
    with running_server(gallery, "127.0.0.1:0") as (_, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel


@pytest.fixture
def stub(channel):
    return gallery_pb2_grpc.GalleryStub(channel)
