"""`gallery` command line: `gallery serve` runs the cluster; flags are `serve`'s keyword arguments."""

from __future__ import annotations

import argparse
import inspect
import logging
import signal
import threading

from cluster import runtime, tuning
from cluster.gallery import Gallery
from cluster.server import running_server
from cluster.store import ObjectStore

logger = logging.getLogger("gallery")


def serve(store: str = "./gallery-data", ray_address: str = "local", num_shards: int = 2, host: str = "127.0.0.1",
          port: int = 50051, s3_endpoint: str = "", shard_num_cpus: float = 1.0, shard_num_gpus: float = 0.0,
          train_threshold: int = tuning.DEFAULT_TRAIN_THRESHOLD, max_workers: int = 32) -> None:
    """Serves gallery.v1 until SIGINT or SIGTERM.

    Args:
        store: object store root: a folder, or s3://bucket/prefix.
        ray_address: "local" for a private Ray on this machine, "auto" to join a cluster.
        num_shards: shard workers (one partition of each collection each).
        host: address to bind; 127.0.0.1 keeps it private to the machine.
        port: gRPC port.
        s3_endpoint: S3 endpoint URL for S3-compatible stores (default: AWS_ENDPOINT_URL or AWS).
        shard_num_cpus: CPUs reserved per shard worker.
        shard_num_gpus: GPUs per shard worker (fractions share one).
        train_threshold: faces before a collection trains IVF-PQ.
        max_workers: concurrent RPCs.
    """
    runtime.start_ray(ray_address)
    workers = runtime.start_workers(num_shards, store, s3_endpoint=s3_endpoint or None, num_cpus=shard_num_cpus,
                                    num_gpus=shard_num_gpus, omp_threads=max(1, int(shard_num_cpus)))
    gallery = Gallery(ObjectStore(store, s3_endpoint=s3_endpoint or None), workers,
                      default_train_threshold=train_threshold)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running_server(gallery, f"{host}:{port}", max_workers=max_workers) as (_, bound):
        print(f"gallery.v1 serving on {host}:{bound} (store {store}, {num_shards} shards)", flush=True)
        stop.wait()
    gallery.close()


def _add_arguments(parser: argparse.ArgumentParser, fn) -> None:
    """One --flag per keyword argument, typed and defaulted from the signature."""
    docs = {}
    for line in inspect.getdoc(fn).splitlines():
        name, sep, text = line.strip().partition(": ")
        if sep and name.isidentifier():
            docs[name] = text
    for name, param in inspect.signature(fn).parameters.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(param.default), default=param.default,
                            help=f"{docs.get(name, '')} (default: %(default)s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gallery", description="gallery-search: face-gallery search cluster")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_arguments(commands.add_parser("serve", help=serve.__doc__.splitlines()[0]), serve)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = args.pop("command")
    {"serve": serve}[command](**args)


if __name__ == "__main__":
    main()
