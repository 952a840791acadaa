"""`gallery` command line: `gallery serve` runs the cluster; flags are `serve`'s keyword arguments."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import threading

import ray

from cluster.api import flags
from cluster.api.limits import MAX_IMAGE_BYTES, MAX_S3_IMAGE_BYTES
from cluster.gateway.face_service import FaceService
from cluster.gateway.gallery import Gallery
from cluster.index import gpu, tuning
from cluster.serve import runtime
from cluster.serve.audit import AuditLog
from cluster.serve.face_servicer import FaceGalleryServicer
from cluster.serve.interceptors import AuditInterceptor, AuthInterceptor, load_tokens
from cluster.serve.server import running_server
from cluster.storage.lease import StoreInUse, WriterLease
from cluster.storage.manifest import UnsafeStore, check_store
from cluster.storage.object_store import ObjectStore
from cluster.storage.s3_images import S3ImageReader

logger = logging.getLogger("gallery")


def serve(store: str = "./gallery-data", ray_address: str = "local", num_shards: int = 2, host: str = "127.0.0.1",
          port: int = 50051, s3_endpoint: str = "", shard_num_cpus: float = 1.0, shard_num_gpus: float = -1.0,
          train_threshold: int = tuning.DEFAULT_TRAIN_THRESHOLD, max_workers: int = 32, face_workers: int = 1,
          face_num_cpus: float = 1.0, face_num_gpus: float = -1.0, max_image_bytes: int = MAX_IMAGE_BYTES,
          max_s3_image_bytes: int = MAX_S3_IMAGE_BYTES, auth_tokens_file: str = "", audit_store: str = "") -> None:
    """Serves gallery.v1 until SIGINT or SIGTERM.

    Args:
        store: object store root: a folder, or s3://bucket/prefix.
        ray_address: "local" for a private Ray on this machine, "auto" to join a cluster.
        num_shards: shard workers (one partition of each collection each).
        host: address to bind; 127.0.0.1 keeps it private to the machine.
        port: gRPC port.
        s3_endpoint: S3 endpoint URL for S3-compatible stores (default: AWS_ENDPOINT_URL or AWS).
        shard_num_cpus: CPUs reserved per shard worker.
        shard_num_gpus: GPUs per shard worker (fractions share one); -1: a share of the GPUs when Ray has some
            and FAISS is built for GPUs (faiss-gpu), else none.
        train_threshold: faces before a collection trains IVF-PQ.
        max_workers: concurrent RPCs.
        face_workers: face model actors for the image RPCs; 0 serves no face model (those RPCs answer UNIMPLEMENTED).
        face_num_cpus: CPUs reserved per face worker.
        face_num_gpus: GPUs per face worker; -1: a share of the GPUs when Ray has some, else none.
        max_image_bytes: largest image accepted as bytes in a request.
        max_s3_image_bytes: largest image read from S3.
        auth_tokens_file: JSON {"<token>": "<caller identity>"}; when set, every call needs a known bearer token.
        audit_store: where audit/ records go (a folder or s3://bucket[/prefix]); default: the store.
    """
    object_store = ObjectStore(store, s3_endpoint=s3_endpoint or None)
    lease = WriterLease.acquire(object_store)  # before anything starts: a second gateway on the store stops here
    try:
        check_store(object_store)
    except UnsafeStore:
        lease.release()
        raise
    runtime.start_ray(ray_address)
    shard_gpus, face_gpus = gpus_per_actor(num_shards, shard_num_gpus, face_workers, face_num_gpus,
                                           cluster_gpus=ray.cluster_resources().get("GPU", 0))
    workers = runtime.start_workers(num_shards, store, s3_endpoint=s3_endpoint or None, num_cpus=shard_num_cpus,
                                    num_gpus=shard_gpus, omp_threads=max(1, int(shard_num_cpus)))
    face_actors, model = [], None
    if face_workers:
        face_actors = runtime.start_face_workers(face_workers, num_cpus=face_num_cpus, num_gpus=face_gpus)
        model = ray.get(face_actors[0].ready.remote())
    gallery = Gallery(object_store, workers, model=model, default_train_threshold=train_threshold, lease=lease)
    tokens = load_tokens(auth_tokens_file) if auth_tokens_file else None
    audit = AuditLog(ObjectStore(audit_store, s3_endpoint=s3_endpoint or None) if audit_store else object_store)
    interceptors = [AuditInterceptor(audit, tokens)] + ([AuthInterceptor(tokens)] if tokens else [])
    faces = FaceService(gallery, face_actors, s3=S3ImageReader(s3_endpoint or None, max_bytes=max_s3_image_bytes),
                        max_image_bytes=max_image_bytes) if face_actors else None
    # The objects alive after start-up (Ray, protobuf, FAISS wrappers) never become garbage; moved out of
    # the collector's reach, they no longer make each full collection walk them, and the shards' records
    # unpickled for every batch trigger many collections (benchmarks/README.md).
    gc.freeze()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running_server(gallery, f"{host}:{port}", max_workers=max_workers, interceptors=interceptors,
                        servicer=FaceGalleryServicer(gallery, faces)) as (_, bound):
        print(f"gallery.v1 serving on {host}:{bound} (store {store}, {num_shards} shards, "
              f"{face_workers} face workers{f' with {model.name}' if model else ''})", flush=True)
        # A signal that lands on another thread runs its Python handler only once the main thread runs
        # Python again: an endless wait here could leave SIGTERM unanswered (seen once in CI).
        while not stop.wait(timeout=0.5):
            pass
    gallery.close()
    audit.close()


def gpus_per_actor(num_shards: int, shard_num_gpus: float, face_workers: int, face_num_gpus: float, *,
                   cluster_gpus: float, faiss_gpu: bool | None = None) -> tuple[float, float]:
    """GPUs per shard worker and per face worker: the actors left to -1 share evenly what the others leave free.

    Shard workers take GPUs only where FAISS is built for them (`faiss_gpu`; None: this process's FAISS).
    """
    auto_shards = shard_num_gpus < 0 and (gpu.built_for_gpus() if faiss_gpu is None else faiss_gpu)
    auto_faces = face_num_gpus < 0
    taken = num_shards * max(shard_num_gpus, 0.0) + face_workers * max(face_num_gpus, 0.0)
    sharing = (num_shards if auto_shards else 0) + (face_workers if auto_faces else 0)
    share = gpu.gpu_share(sharing, cluster_gpus - taken)
    return (share if auto_shards else max(shard_num_gpus, 0.0)), (share if auto_faces else face_num_gpus)


COMMANDS = {"serve": serve}


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `gallery` parser, and each command's own parser by name."""
    top = argparse.ArgumentParser(prog="gallery", description="gallery-search: face-gallery search cluster")
    commands = top.add_subparsers(dest="command", required=True)
    return top, {name: flags.add_arguments(commands.add_parser(name, help=fn.__doc__.partition("\n")[0],
                                                                description=fn.__doc__.partition("\n")[0]), fn)
                 for name, fn in COMMANDS.items()}


def parse_args(argv: list[str] | None = None) -> tuple[str, dict]:
    """The command and its keyword arguments. A flag the command does not have is reported with that
    command's usage (argparse would report it with the top level's, which lists no flags)."""
    top, commands = parser()
    args, unknown = top.parse_known_args(argv)
    kwargs = vars(args)
    command = kwargs.pop("command")
    if unknown:
        commands[command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return command, kwargs


def main(argv: list[str] | None = None) -> None:
    command, kwargs = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[command](**kwargs)
    except (StoreInUse, UnsafeStore) as e:
        sys.exit(f"gallery {command}: {e}")


if __name__ == "__main__":
    main()
