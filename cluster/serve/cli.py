"""`gallery` command line: `gallery serve` runs the cluster, `gallery token …` manages callers, `gallery audit …`
reads the audit log. Each command's flags are its function's keyword arguments."""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid

import grpc
import ray

from cluster.api import flags
from cluster.api.limits import MAX_IMAGE_BYTES, MAX_S3_IMAGE_BYTES
from cluster.gateway.face_service import FaceService
from cluster.gateway.gallery import Gallery
from cluster.gateway.search import DEFAULT_MAX_QUEUED_QUERIES
from cluster.index import gpu, tuning
from cluster.serve import admin, reaper, runtime
from cluster.serve.audit import AuditLog
from cluster.serve.face_servicer import FaceGalleryServicer
from cluster.serve.interceptors import TrustInterceptor
from cluster.serve.metrics import GatewayMetrics, serving_metrics
from cluster.serve.server import running_server
from cluster.serve.tokens import ROLES, TokenRegistry, admin_token_path, ensure_admin_token
from cluster.shards.ray_shards import RayShards
from cluster.storage.lease import StoreInUse, WriterLease
from cluster.storage.manifest import UnsafeStore, check_store
from cluster.storage.object_store import ObjectStore, UnusableStore
from cluster.storage.s3_images import S3ImageReader

logger = logging.getLogger("gallery")

ROLES_OF_GATEWAY = ("writer", "standby", "reader")


def serve(store: str = "./gallery-data", ray_address: str = "local", num_shards: int = 2, host: str = "127.0.0.1",
          port: int = 50051, s3_endpoint: str = "", shard_num_cpus: float = 1.0, shard_num_gpus: float = -1.0,
          train_threshold: int = tuning.DEFAULT_TRAIN_THRESHOLD, max_workers: int = 32, face_workers: int = 1,
          face_num_cpus: float = 1.0, face_num_gpus: float = -1.0, max_image_bytes: int = MAX_IMAGE_BYTES,
          max_s3_image_bytes: int = MAX_S3_IMAGE_BYTES, audit_store: str = "", admin_token_file: str = "",
          tls_cert: str = "", tls_key: str = "", tls_client_ca: str = "", tls_client_role: str = "searcher",
          insecure: bool = False, max_queued_queries: int = DEFAULT_MAX_QUEUED_QUERIES, metrics_port: int = 9464,
          metrics_host: str = "127.0.0.1", replicas: int = 1, role: str = "writer",
          follow_interval_s: float = 1.0, local_dir: str = "") -> None:
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
        audit_store: where audit/ records go (a folder or s3://bucket[/prefix]); default: the store.
        admin_token_file: where the admin token is written when the store has no admin yet (mode 0600);
            default beside a local store (<store>.admin-token), else ./gallery-admin-token.
        tls_cert: PEM certificate chain of the server; with tls_key, serves TLS.
        tls_key: PEM private key of the server.
        tls_client_ca: PEM CA certificates; when set, clients must present a certificate it signed (mutual
            TLS), and a caller without a token is identified by its certificate's common name.
        tls_client_role: role of callers identified by a client certificate (admin, enroller, searcher, auditor).
        insecure: serve plaintext on an address other than loopback (tokens then cross the network in clear).
        max_queued_queries: queries the gateway holds at once (queued or in flight), >= 1024; searches beyond
            are refused at once with RESOURCE_EXHAUSTED, so that admitted ones keep a bounded latency.
        metrics_port: Prometheus metrics on http://<metrics_host>:<port>/metrics; 0 serves none.
        metrics_host: address of the metrics endpoint; 127.0.0.1 keeps it private to the machine, 0.0.0.0 lets
            Prometheus scrape it from inside a cluster.
        replicas: copies of each shard worker, placed on different Ray nodes where there are enough; a
            collection keeps 1 to this many (CreateCollection.replicas; 0 there: this many).
        role: "writer" takes the store's writer lease (or exits when another gateway holds it); "standby"
            starts its workers, then waits for the lease and serves as the writer once it has it (when the
            writer dies); "reader" serves searches and reads from what the writer commits, following it
            every follow_interval_s, with shard workers of its own (any number of readers per store; each
            needs an --audit-store of its own, as an audit chain has one writer).
        follow_interval_s: a reader's seconds between two looks at the store's commits.
        local_dir: a folder on local disk (on every Ray node) that shard workers memory-map their fp16
            re-rank vectors from, so that those live in the page cache and on disk rather than in the
            workers' memory: for collections of millions of faces; "" keeps them in memory.
    """
    if role not in ROLES_OF_GATEWAY:
        raise ValueError(f"--role must be one of {', '.join(ROLES_OF_GATEWAY)}, got {role!r}")
    if role == "reader" and not audit_store:
        raise ValueError("a reader needs an --audit-store of its own: the store's audit chain has one writer")
    credentials = _tls_credentials(host, tls_cert, tls_key, tls_client_ca, tls_client_role, insecure)
    if role != "standby":  # a standby binds once it takes over, when the writer it replaces has let go
        _check_ports_free(host, port, metrics_host, metrics_port)
    # Both stores are opened first, so that one that cannot be a store stops serve before the lease and Ray.
    object_store = ObjectStore(store, s3_endpoint=s3_endpoint or None)
    audit_object_store = ObjectStore(audit_store, s3_endpoint=s3_endpoint or None) if audit_store else object_store
    # A writer takes the lease before anything starts: a second writer on the store stops here.
    lease = WriterLease.acquire(object_store) if role == "writer" else None
    try:
        check_store(object_store)
    except UnsafeStore:
        if lease is not None:
            lease.release()
        raise
    reaper.watch_in_background()  # a hard kill of this process leaves none of the Ray processes it starts
    runtime.start_ray(ray_address)
    shard_gpus, face_gpus = gpus_per_actor(num_shards * replicas, shard_num_gpus, face_workers, face_num_gpus,
                                           cluster_gpus=ray.cluster_resources().get("GPU", 0))
    shards = RayShards.start(num_shards, store, replicas=replicas, s3_endpoint=s3_endpoint or None,
                             num_cpus=shard_num_cpus, num_gpus=shard_gpus, omp_threads=max(1, int(shard_num_cpus)),
                             cluster_name="gallery" if role != "reader" else f"gallery-reader-{uuid.uuid4().hex[:8]}",
                             local_dir=os.path.abspath(local_dir) if local_dir else None)
    face_actors, model, models = [], None, None
    if face_workers:
        face_actors = runtime.start_face_workers(face_workers, num_cpus=face_num_cpus, num_gpus=face_gpus)
        model = ray.get(face_actors[0].ready.remote())  # the default model, loaded; the others load on first use
        models = runtime.face_models()
    if role == "standby":
        print(f"standby: workers ready; waiting for the writer lease of {store}", flush=True)
        lease = WriterLease.acquire(object_store, wait_s=math.inf)
        took_over = time.monotonic()
        shards.call_all("catch_up")  # the workers loaded the store when they started: add what came since
        _check_ports_free(host, port, metrics_host, metrics_port)
    metrics = GatewayMetrics()
    gallery = Gallery(object_store, shards, model=model, models=models, default_train_threshold=train_threshold,
                      lease=lease, max_queued_queries=max_queued_queries, fan_out_observer=metrics.observe_fan_out,
                      read_only=role == "reader", follow_interval_s=follow_interval_s)
    metrics.watch(gallery)
    tokens = TokenRegistry(object_store)
    token_path = admin_token_file or admin_token_path(store)
    if role != "reader" and ensure_admin_token(tokens, token_path):  # a reader writes nothing to the store
        print(f"created the admin token: {token_path} (mode 0600; `gallery token create` makes others)", flush=True)
    audit = AuditLog(audit_object_store, write_observer=metrics.observe_audit_write)
    # Metrics first: the calls the trust interceptor refuses are counted too.
    interceptors = [metrics.interceptor(),
                    TrustInterceptor(audit, tokens, certificate_role=tls_client_role if tls_client_ca else None)]
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
                        servicer=FaceGalleryServicer(gallery, faces, audit_object_store),
                        credentials=credentials) as (_, bound), \
            (serving_metrics(metrics, metrics_host, metrics_port) if metrics_port else contextlib.nullcontext()):
        if role == "standby":
            print(f"standby: took over as the writer {time.monotonic() - took_over:.1f} s after the lease was free",
                  flush=True)
        print(f"gallery.v1 serving on {host}:{bound} as {'the writer' if role != 'reader' else 'a reader'} "
              f"({'TLS' if credentials else 'plaintext'}; store {store}, "
              f"{num_shards} shards{f' × {replicas} replicas' if replicas > 1 else ''}, {face_workers} face workers{f' with {model.name}' if model else ''}; "
              f"admin token in {token_path}"
              f"{f'; metrics on http://{metrics_host}:{metrics_port}/metrics' if metrics_port else ''})", flush=True)
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


def _tls_credentials(host: str, cert: str, key: str, client_ca: str, client_role: str,
                     insecure: bool) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, or None for plaintext, which only loopback or --insecure allows."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    if client_ca and not cert:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
    if client_role not in ROLES:
        raise ValueError(f"--tls-client-role {client_role!r}: one of {', '.join(ROLES)}")
    if not cert:
        if not insecure and not _is_loopback(host):
            raise ValueError(f"refusing plaintext on {host}: tokens would cross the network in clear; give "
                             "--tls-cert and --tls-key, or --insecure to accept that")
        return None
    with open(cert, "rb") as c, open(key, "rb") as k:
        pair = [(k.read(), c.read())]
    root = open(client_ca, "rb").read() if client_ca else None
    return grpc.ssl_server_credentials(pair, root_certificates=root, require_client_auth=bool(client_ca))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _check_ports_free(host: str, port: int, metrics_host: str, metrics_port: int) -> None:
    _check_port_free(host, port)
    if metrics_port:
        _check_port_free(metrics_host, metrics_port)


def _check_port_free(host: str, port: int) -> None:
    """Fails at once, before Ray starts, when another process listens on the port (the server binds it again)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            raise OSError(f"cannot serve on {host}:{port}: {e.strerror} (is another gallery serve there?)") from e


# Commands, and groups of commands, by name: `gallery serve`, `gallery token create`, …
COMMANDS = {
    "serve": serve,
    "token": {"create": admin.token_create, "list": admin.token_list, "revoke": admin.token_revoke},
    "audit": {"verify": admin.audit_verify, "query": admin.audit_query},
}


def _summary(fn) -> str:
    return fn.__doc__.partition("\n")[0]


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `gallery` parser, and each command's own parser by its full name ("serve", "token create")."""
    top = argparse.ArgumentParser(prog="gallery", description="gallery-search: face-gallery search cluster")
    commands = top.add_subparsers(dest="command", required=True)
    parsers = {}
    for name, target in COMMANDS.items():
        if callable(target):
            parsers[name] = flags.add_arguments(
                commands.add_parser(name, help=_summary(target), description=_summary(target)), target)
            continue
        group = commands.add_parser(name, help=f"{name} commands: {', '.join(target)}")
        subcommands = group.add_subparsers(dest="subcommand", required=True)
        for sub, fn in target.items():
            parsers[f"{name} {sub}"] = flags.add_arguments(
                subcommands.add_parser(sub, help=_summary(fn), description=_summary(fn)), fn)
    return top, parsers


def parse_args(argv: list[str] | None = None) -> tuple[str, dict]:
    """The command's full name and its keyword arguments. A flag the command does not have is reported with
    that command's usage (argparse would report it with the top level's, which lists no flags)."""
    top, commands = parser()
    args, unknown = top.parse_known_args(argv)
    kwargs = vars(args)
    command = kwargs.pop("command")
    if "subcommand" in kwargs:
        command = f"{command} {kwargs.pop('subcommand')}"
    if unknown:
        commands[command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return command, kwargs


def main(argv: list[str] | None = None) -> None:
    command, kwargs = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    group, _, sub = command.partition(" ")
    fn = COMMANDS[group][sub] if sub else COMMANDS[group]
    try:
        result = fn(**kwargs)
    except (StoreInUse, UnsafeStore, UnusableStore, OSError, ValueError) as e:
        sys.exit(f"gallery {command}: {e}")
    if command == "audit verify" and not result.intact:
        sys.exit(1)


if __name__ == "__main__":
    main()
