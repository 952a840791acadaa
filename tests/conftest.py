"""Shared fixtures: one private local Ray per test session, galleries on fresh stores, real gRPC servers."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid

import grpc
import pytest
import ray
from gallery.v1 import gallery_pb2_grpc
from support import S3_CREDENTIALS, free_port, stop_process, wait_until

from cluster.gateway.gallery import Gallery
from cluster.serve import runtime
from cluster.serve.server import running_server
from cluster.shards.backend import LocalShards
from cluster.shards.ray_shards import RayShards
from cluster.storage.object_store import ObjectStore


@pytest.fixture(scope="session")
def ray_session():
    runtime.start_ray("local", num_cpus=6)
    yield
    ray.shutdown()


class GalleryFactory:
    """Starts galleries with their own shard workers; stopping one and starting another on the same store
    models stopping and starting the service.

    `backend="ray"` runs the workers as Ray actors of the session's local Ray; "local" runs them in this process.
    """

    def __init__(self):
        self._started: list[Gallery] = []

    def start(self, store_uri: str, *, num_workers: int = 2, s3_endpoint: str | None = None,
              env_vars: dict[str, str] | None = None, num_gpus: float = 0, backend: str = "ray", replicas: int = 1,
              **kwargs) -> Gallery:
        if backend == "local":
            shards = LocalShards(num_workers, store_uri, s3_endpoint=s3_endpoint)
        else:
            shards = RayShards.start(num_workers, store_uri, replicas=replicas, s3_endpoint=s3_endpoint, env_vars=env_vars,
                                     cluster_name=f"test-{uuid.uuid4().hex[:8]}", num_cpus=0.5, num_gpus=num_gpus)
        try:
            gallery = Gallery(ObjectStore(store_uri, s3_endpoint=s3_endpoint), shards, **kwargs)
        except BaseException:
            shards.stop()
            raise
        self._started.append(gallery)
        return gallery

    def stop(self, gallery: Gallery) -> None:
        if gallery in self._started:
            gallery.close()
            gallery.shards.stop()
            self._started.remove(gallery)

    def stop_all(self) -> None:
        for gallery in list(self._started):
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint (moto's server) on 127.0.0.1; yields its URL."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("s3") / "moto.log", "wb")
    # this interpreter's moto (>= 5.2.5), not whichever moto_server is first on PATH: 5.2.1 breaks multipart writes
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return urllib.request.urlopen(endpoint, timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_until(answers, 30, "moto S3 server")
        yield endpoint
    finally:
        try:
            stop_process(process, grace_s=10)
        finally:
            log.close()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket; the test process gets the credentials in its environment."""
    import boto3

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    name = f"gallery-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, **_boto_credentials()).create_bucket(Bucket=name)
    return name


def _boto_credentials() -> dict:
    return {"aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": S3_CREDENTIALS["AWS_REGION"]}
