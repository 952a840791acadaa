"""Starting Ray, the shard workers and the face workers: the only module that decides where things run."""

from __future__ import annotations

import logging
import os

import ray

from cluster.index.gpu import gpu_share
from cluster.shards.protocol import MAINTENANCE
from cluster.shards.worker import ShardWorker

logger = logging.getLogger(__name__)

NAMESPACE = "gallery"


def start_ray(address: str = "local", *, num_cpus: int | None = None) -> None:
    """Connects to Ray.

    Args:
        address: "local" starts a private Ray for this process (never attaching to
            another cluster found on the machine); "auto" or "ray://…"/"host:port"
            joins an existing cluster. Inside a Ray job or actor, the job's cluster is used.
        num_cpus: logical CPUs of a local Ray (default: the machine's, at least 4 so
            that shards, training and the face pool can all be scheduled).
    """
    if ray.is_initialized():
        return
    kwargs = dict(namespace=NAMESPACE, log_to_driver=True)
    if address == "local":
        kwargs.update(num_cpus=num_cpus or max(os.cpu_count() or 1, 4), include_dashboard=False)
    ray.init(address=address, **kwargs)
    logger.info("ray: %s", ray.cluster_resources())


def start_workers(num_workers: int, store_uri: str, *, s3_endpoint: str | None = None, num_cpus: float = 1,
                  num_gpus: float = 0, omp_threads: int = 1, cluster_name: str = "gallery",
                  env_vars: dict[str, str] | None = None) -> list:
    """Starts (or, in a long-lived cluster, finds) the named shard actors.

    Ray restarts a crashed worker, which reloads its partitions from the store.
    Actors are named "{cluster_name}-shard-{i}-of-{num_workers}", so a restarted
    gateway finds the workers it left. `env_vars` reach the workers on every node
    (e.g. AWS credentials for an S3 store). Workers given GPUs (`num_gpus` > 0)
    search trained partitions on them.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    actor = ray.remote(concurrency_groups={MAINTENANCE: 1})(ShardWorker)
    workers = [actor.options(name=f"{cluster_name}-shard-{i}-of-{num_workers}", namespace=NAMESPACE, get_if_exists=True,
                             max_restarts=-1, max_task_retries=0,
                             num_cpus=num_cpus, num_gpus=num_gpus,
                             runtime_env={"env_vars": env_vars} if env_vars else None)
               .remote(i, num_workers, store_uri, s3_endpoint=s3_endpoint, omp_threads=omp_threads,
                       use_gpu=num_gpus > 0)
               for i in range(num_workers)]
    ray.get([w.ready.remote() for w in workers])
    return workers


def start_face_workers(num_workers: int, *, num_cpus: float = 1, num_gpus: float | None = None, batch_size: int = 32,
                       cluster_name: str = "gallery") -> list:
    """Starts (or finds) the named FaceWorker actors that detect and embed for image requests.

    Args:
        num_workers: actors, each with its own copy of the model; >= 1.
        num_cpus: CPUs reserved per actor (torch uses as many threads).
        num_gpus: GPUs per actor; None: one each when the Ray cluster has GPUs (an equal
            fraction of one when there are fewer GPUs than actors), else none.
        batch_size: face crops per forward pass.
        cluster_name: prefix of the actor names, as for `start_workers`.

    Returns:
        Actor handles, each ready (model loaded).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_gpus is None:
        num_gpus = gpu_share(num_workers, ray.cluster_resources().get("GPU", 0))
    from cluster.faces.worker import FaceWorker  # torch and OpenCV load only where faces are served

    actor = ray.remote(FaceWorker)
    # Ray leaves CUDA visible to CPU-only actors on some setups: name the device outright.
    device = "cuda" if num_gpus > 0 else "cpu"
    workers = [actor.options(name=f"{cluster_name}-faces-{i}-of-{num_workers}", namespace=NAMESPACE,
                             get_if_exists=True, max_restarts=-1, max_task_retries=1,
                             num_cpus=num_cpus, num_gpus=num_gpus)
               .remote(batch_size=batch_size, device=device)
               for i in range(num_workers)]
    ray.get([w.ready.remote() for w in workers])
    logger.info("%d face workers ready on %s", num_workers, device)
    return workers


def stop_workers(workers: list) -> None:
    """Ends the workers for good (no restart); their data stays in the store."""
    for worker in workers:
        ray.kill(worker, no_restart=True)
