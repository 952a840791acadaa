"""Starting Ray and the face workers. With `cluster/shards/ray_shards.py` (the shard workers), the only code
that decides where things run."""

from __future__ import annotations

import logging
import os

import ray

from cluster.index.gpu import gpu_share
from cluster.shards.ray_shards import NAMESPACE

logger = logging.getLogger(__name__)


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


def start_face_workers(num_workers: int, *, num_cpus: float = 1, num_gpus: float | None = None, batch_size: int = 32,
                       cluster_name: str = "gallery") -> list:
    """Starts (or finds) the named FaceWorker actors that detect and embed for image requests.

    Args:
        num_workers: actors, each with its own copy of the model; >= 1.
        num_cpus: CPUs reserved per actor (torch uses as many threads).
        num_gpus: GPUs per actor; None: one each when the Ray cluster has GPUs (an equal
            fraction of one when there are fewer GPUs than actors), else none.
        batch_size: face crops per forward pass.
        cluster_name: prefix of the actor names, as for `RayShards.start`.

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


def face_models() -> dict:
    """Every face model the workers can embed with (name → EmbeddingModel), described without loading weights."""
    from cluster.faces.models import describe_models

    return describe_models()


def stop_face_workers(workers: list) -> None:
    """Ends the face workers for good (no restart)."""
    for worker in workers:
        ray.kill(worker, no_restart=True)
