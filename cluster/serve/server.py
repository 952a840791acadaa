"""Building the gRPC server (`create_server`) apart from running it (`running_server`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures

import grpc
from gallery.v1 import gallery_pb2, gallery_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cluster.api.limits import MAX_MESSAGE_BYTES
from cluster.gateway.gallery import Gallery
from cluster.serve.servicer import GalleryServicer

logger = logging.getLogger(__name__)

SERVICE_NAME = gallery_pb2.DESCRIPTOR.services_by_name["Gallery"].full_name


def create_server(gallery: Gallery, address: str = "127.0.0.1:0", *, max_workers: int = 32,
                  interceptors: Sequence[grpc.ServerInterceptor] = (), servicer: GalleryServicer | None = None,
                  credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    """Builds a server with the Gallery service, health and reflection, bound but not started.

    Args:
        gallery: the API the servicer translates to.
        address: host:port; port 0 picks a free one.
        max_workers: concurrent RPCs.
        interceptors: auth, audit and the like, outermost first.
        servicer: a servicer to register instead of the plain GalleryServicer (e.g. one with the face RPCs).
        credentials: TLS (`grpc.ssl_server_credentials`); None serves plaintext.

    Returns:
        (server, bound port).

    Raises:
        OSError: the address cannot be bound, e.g. another process listens on the port.
    """
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               # gRPC sets SO_REUSEPORT by default: a second server on a used port would start and take a
               # share of the connections, answering from whatever store it serves.
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                         interceptors=list(interceptors), options=options)
    gallery_pb2_grpc.add_GalleryServicer_to_server(servicer or GalleryServicer(gallery), server)
    health_servicer = GalleryHealth(lambda: not gallery.shards.unavailable_workers())
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    unbound = f"could not bind {address}: is another server listening on it?"
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as e:  # grpc raises this where older versions returned 0
        raise OSError(unbound) from e
    if port == 0:
        raise OSError(unbound)
    return server, port


class GalleryHealth(health.HealthServicer):
    """gRPC health whose status follows the shard workers: NOT_SERVING for the server ("") and for
    gallery.v1.Gallery while any worker cannot answer, SERVING again once all can. Checked when asked."""

    def __init__(self, serving: Callable[[], bool]):
        super().__init__()
        self._serving = serving
        self._refresh()

    def _refresh(self) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if self._serving()
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            self.set(name, status)

    def Check(self, request, context):
        self._refresh()
        return super().Check(request, context)


@contextlib.contextmanager
def running_server(gallery: Gallery, address: str = "127.0.0.1:0", **kwargs) -> Iterator[tuple[grpc.Server, int]]:
    """Starts a server for the duration of a with-block and stops it after, whatever happens."""
    server, port = create_server(gallery, address, **kwargs)
    server.start()
    logger.info("gallery.v1 serving on port %d", port)
    try:
        yield server, port
    finally:
        server.stop(grace=2).wait()
