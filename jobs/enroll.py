"""Bulk enrollment: embed the gallery images that Parquet manifests list, and commit them to a collection.

    python -m jobs.enroll --manifest s3://bucket/manifests/ --collection staff --output s3://bucket/enroll/ \\
        --gateway 127.0.0.1:50051 [--s3-endpoint http://127.0.0.1:9000]

The same command runs under `ray job submit -- python -m jobs.enroll …`. A streaming Ray Data pipeline:

    read_rows      tasks, one per manifest row group with chunks still to do (jobs/image_manifests.py)
    repartition    into blocks of images_per_batch rows, so that the stages after it run in parallel
    fetch_images   tasks, threads for the I/O; unreadable rows get a reason (jobs/fetch.py)
    FaceEmbedder   actor pool, one actor per GPU or CPU actors: the gateway's FaceWorker (jobs/embed.py)
    driver         once every row of a chunk is in: writes its faces and errors as Parquet, commits the
                   faces with AddEmbeddings(skip_existing=True), writes its commit record (jobs/job_state.py)

then builds the IVF-PQ index when the collection has outgrown its own (jobs/build_index.py). Chunks
are written by the driver, not by a pipeline stage, so that each is one object with a stable name
whatever way Ray Data cuts the stream into blocks; the driver only moves ~2 KiB per face.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from cluster.api import flags
from cluster.api.limits import DEFAULT_MAX_FACES, MAX_FACES_PER_ADD, MAX_FACES_PER_IMAGE, MAX_S3_IMAGE_BYTES
from cluster.client import GalleryClient
from cluster.index.training import ivfpq_factory
from cluster.serve import runtime
from cluster.storage.manifest import check_collection_id
from cluster.storage.object_store import ObjectStore
from jobs.build_index import build_index
from jobs.commit import add_faces, gateway_client, new_faces
from jobs.embed import FaceEmbedder
from jobs.fetch import fetch_images
from jobs.image_manifests import plan_chunks, read_rows, read_tasks
from jobs.job_state import JobState
from jobs.progress import Progress, timed
from jobs.storage import aws_env

logger = logging.getLogger(__name__)


@dataclass
class EnrollSummary:
    """What a run did. Counts are this run's; rows of chunks committed by earlier runs are not redone."""

    collection: str
    rows_read: int = 0  # rows in the manifests
    rows_already_committed: int = 0  # in chunks earlier runs committed
    rows_processed: int = 0
    chunks_committed: int = 0
    faces_found: int = 0  # faces that passed the quality filter
    faces_enrolled: int = 0  # added to the collection
    faces_already_enrolled: int = 0  # the collection had them (an interrupted run, a duplicated row)
    faces_below_quality: int = 0  # detected but under the quality filter, so not enrolled
    rows_failed: dict[str, int] = field(default_factory=dict)  # by reason (jobs/fetch.py)
    index: str = ""  # what the index-building step did
    elapsed_s: float = 0.0
    faces_per_s: float = 0.0  # faces found per second of pipeline


def default_num_actors(num_gpus: float, num_cpus: float, actor_num_cpus: float, *, machine_cpus: int = 0) -> int:
    """One actor per GPU. Without GPUs, one per `actor_num_cpus` CPUs, keeping one CPU for the read and fetch
    tasks and the driver: the embedder saturates its CPUs, while fetching mostly waits on I/O. On a private
    local Ray (`machine_cpus` > 0), whose CPU count is padded to at least 4, one per `actor_num_cpus` cores."""
    if num_gpus >= 1:
        return int(num_gpus)
    if machine_cpus:
        return max(1, int(machine_cpus // actor_num_cpus))
    return max(1, int((num_cpus - 1) // actor_num_cpus))


def _start_ray(ray_address: str) -> bool:
    """Connects to Ray; True when this started a private local one."""
    if ray.is_initialized():
        return False
    address = ray_address or ("auto" if os.environ.get("RAY_ADDRESS") else "local")  # RAY_ADDRESS: ray job submit
    runtime.start_ray(address)
    return address == "local"


def _open_collection(client: GalleryClient, collection: str, dimension: int, embedding_model: str = ""):
    try:
        return client.describe(collection)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
    try:
        logger.info("creating collection %s (dimension %d, model %s)", collection, dimension,
                    embedding_model or "the default")
        return client.create_collection(collection, dimension=dimension,
                                        embedding_model="" if dimension else embedding_model)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.ALREADY_EXISTS:  # another job created it meanwhile
            raise
        return client.describe(collection)


def _check_model(description, rows: pa.Table) -> None:
    """Raises before the first commit when the collection holds another model's embeddings."""
    model = rows.column("embedding_model")[0].as_py()
    dimension = rows.schema.field("faces").type.value_type.field("embedding").type.list_size
    if description.embedding_model and description.embedding_model != model:
        raise ValueError(f"collection {description.collection_id!r} holds {description.embedding_model} "
                         f"embeddings; this job embeds with {model}")
    if description.dimension != dimension:
        raise ValueError(f"collection {description.collection_id!r} has dimension {description.dimension}; "
                         f"{model} embeddings have {dimension}")


def _pipeline(tasks: list[dict], *, s3_endpoint: str, images_per_batch: int, fetch_threads: int,
              max_image_bytes: int, num_actors: int, actor_num_cpus: float, use_gpus: bool,
              embedder_kwargs: dict) -> ray.data.Dataset:
    env = {"env_vars": aws_env()}
    return (ray.data.from_items(tasks, override_num_blocks=len(tasks))
            .map_batches(read_rows, batch_size=1, batch_format="pyarrow", fn_kwargs={"s3_endpoint": s3_endpoint},
                         num_cpus=0.25, runtime_env=env)
            .repartition(target_num_rows_per_block=images_per_batch)
            .map_batches(fetch_images, batch_size=None, batch_format="pyarrow", num_cpus=0.25, runtime_env=env,
                         fn_kwargs={"s3_endpoint": s3_endpoint, "max_image_bytes": max_image_bytes,
                                    "threads": fetch_threads})
            .map_batches(FaceEmbedder, batch_size=images_per_batch, batch_format="pyarrow",
                         compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=actor_num_cpus,
                         num_gpus=1 if use_gpus else 0, runtime_env=env,
                         fn_constructor_kwargs={**embedder_kwargs, "device": "cuda" if use_gpus else "cpu"}))


def enroll(manifest: str, collection: str, output: str, gateway: str = "127.0.0.1:50051", s3_endpoint: str = "",
           dimension: int = 0, quality_filter: str = "AUTO", max_faces: int = DEFAULT_MAX_FACES,
           rows_per_segment: int = 256, images_per_batch: int = 16, num_actors: int = 0, actor_num_cpus: float = 1.0,
           fetch_threads: int = 16, max_image_bytes: int = MAX_S3_IMAGE_BYTES, commit_batch_faces: int = 1000,
           build_index_min_growth: float = 2.0, ray_address: str = "", progress_interval_s: float = 10.0,
           embedding_model: str = "") -> EnrollSummary:
    """Enrolls the faces of the images a manifest lists; run it again to resume or to add new manifest files.

    Args:
        manifest: a Parquet file, or a folder / s3:// prefix of them, with image_uri and external_image_id columns.
        collection: the collection to enroll into; created when missing.
        output: folder or s3://bucket/prefix for faces, errors and job state (under <output>/<collection>/).
        gateway: host:port of the gallery.v1 gateway.
        s3_endpoint: S3 endpoint URL for S3-compatible stores; "" for AWS_ENDPOINT_URL, else AWS.
        dimension: dimension of a collection the job creates: 0 for a face collection of embedding_model, else a
            raw-embedding collection of that dimension (128 for SFace, 512 for FaceNet).
        quality_filter: faces under it are not enrolled: NONE, LOW, AUTO, MEDIUM or HIGH.
        max_faces: faces detected per image, largest first, 1..1000.
        rows_per_segment: manifest rows per chunk, the unit that is committed and skipped on a re-run.
        images_per_batch: images per block and per call of an embedding actor.
        num_actors: embedding actors; 0 for one per GPU, or without GPUs one per actor_num_cpus CPUs less one
            (on a private local Ray, one per actor_num_cpus cores).
        actor_num_cpus: CPUs per embedding actor (torch threads).
        fetch_threads: concurrent image reads per fetch task.
        max_image_bytes: larger images fail as too_large.
        commit_batch_faces: faces per AddEmbeddings request, 1..10000.
        build_index_min_growth: afterwards, train IVF-PQ when the collection holds this many times the faces
            its index was trained on (see jobs/build_index.py); 0 skips the step.
        ray_address: Ray cluster to run on; "" for the job's cluster under `ray job submit`, else a private local one.
        progress_interval_s: seconds between progress lines when not in a terminal.
        embedding_model: the face model to embed with ("sface", "facenet-inception-resnet-v1-casia-20180408"); ""
            for a face collection's own model, else the default (sface). A face collection of another model stops
            the job.

    Returns:
        The run's summary: rows read, faces enrolled, rows failed by reason, …

    Raises:
        ValueError: an argument out of range, a manifest without the required columns, a collection of
            another model or dimension.
        FileNotFoundError: no manifest there.
        grpc.RpcError: the gateway refused a request (other than retried UNAVAILABLE / DEADLINE_EXCEEDED).

    Example:
        >>> enroll("s3://photos/manifests/", "staff", "s3://photos/enroll/", gateway="10.0.0.5:50051").rows_failed
        {'no_face': 3, 'missing_object': 1}
    """
    from cluster.faces import quality_filter_threshold

    for name, value in (("manifest", manifest), ("collection", collection), ("output", output)):
        if not value:
            raise ValueError(f"{name} is required")
    check_collection_id(collection)  # it names a folder of the output store
    quality_filter_threshold(quality_filter)
    if not 1 <= max_faces <= MAX_FACES_PER_IMAGE:
        raise ValueError(f"max_faces must be in [1, {MAX_FACES_PER_IMAGE}], got {max_faces}")
    for name, value, minimum in (("rows_per_segment", rows_per_segment, 1), ("images_per_batch", images_per_batch, 1),
                                 ("num_actors", num_actors, 0),
                                 ("fetch_threads", fetch_threads, 1), ("max_image_bytes", max_image_bytes, 1)):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if actor_num_cpus <= 0:
        raise ValueError(f"actor_num_cpus must be > 0, got {actor_num_cpus}")
    if not 1 <= commit_batch_faces <= MAX_FACES_PER_ADD:
        raise ValueError(f"commit_batch_faces must be in [1, {MAX_FACES_PER_ADD}], got {commit_batch_faces}")
    if build_index_min_growth and build_index_min_growth < 1:
        raise ValueError(f"build_index_min_growth must be 0 (off) or >= 1, got {build_index_min_growth}")

    started = time.monotonic()
    summary = EnrollSummary(collection)
    state = JobState(ObjectStore(f"{output.rstrip('/')}/{collection}", s3_endpoint=s3_endpoint or None))
    with timed("plan chunks"):
        chunks = plan_chunks(manifest, rows_per_segment, s3_endpoint)
        done = state.committed()
        pending = [c for c in chunks if c.key not in done]
    summary.rows_read = sum(c.rows for c in chunks)
    todo = sum(c.rows for c in pending)
    summary.rows_already_committed = summary.rows_read - todo
    logger.info("%s: %d manifest rows in %d chunks, %d rows already committed, %d to do", manifest,
                summary.rows_read, len(chunks), summary.rows_already_committed, todo)
    with gateway_client(gateway) as client:
        description = _open_collection(client, collection, dimension, embedding_model)
        if description.embedding_model and embedding_model and description.embedding_model != embedding_model:
            raise ValueError(f"collection {collection!r} holds {description.embedding_model} embeddings, not "
                             f"{embedding_model}: re-embed it with jobs/reembed.py to change its model")
        model = description.embedding_model or embedding_model
        if pending:
            private = _start_ray(ray_address)
            resources = ray.cluster_resources()
            gpus = resources.get("GPU", 0)
            num_actors = num_actors or default_num_actors(gpus, resources.get("CPU", 1), actor_num_cpus,
                                                          machine_cpus=(os.cpu_count() or 1) if private else 0)
            num_actors = min(num_actors, -(-todo // images_per_batch))  # no more actors than batches
            logger.info("embedding with %d actor(s) on %s", num_actors, "GPUs" if gpus else "CPUs")
            ds = _pipeline(read_tasks(pending), s3_endpoint=s3_endpoint, images_per_batch=images_per_batch,
                           fetch_threads=fetch_threads, max_image_bytes=max_image_bytes, num_actors=num_actors,
                           actor_num_cpus=actor_num_cpus, use_gpus=gpus >= 1,
                           embedder_kwargs={"quality_filter": quality_filter, "max_faces": max_faces,
                                            "max_image_bytes": max_image_bytes, "model": model})
            with timed("enroll pipeline"):
                _run(ds, pending, state, client, description, summary, commit_batch_faces, progress_interval_s)
    summary.elapsed_s = time.monotonic() - started
    if build_index_min_growth:
        summary.index = _build_index(collection, gateway, build_index_min_growth)
    logger.info("summary: %s", json.dumps(asdict(summary)))
    return summary


def _run(ds: ray.data.Dataset, pending: list, state: JobState, client: GalleryClient, description,
         summary: EnrollSummary, commit_batch_faces: int, progress_interval_s: float) -> None:
    """Drives the pipeline: gathers each chunk's rows, then writes and commits it."""
    plans = {c.key: c for c in pending}
    gathered: dict[str, list[pa.Table]] = {}
    counts: Counter = Counter()
    failed: Counter = Counter()
    progress = Progress(sum(c.rows for c in pending), interval_s=progress_interval_s)
    checked = False
    start = time.monotonic()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not batch.num_rows:
                continue
            if not checked:
                _check_model(description, batch)
                checked = True
            found = pc.sum(pc.list_value_length(batch.column("faces"))).as_py() or 0
            summary.faces_found += found
            summary.faces_below_quality += pc.sum(batch.column("faces_below_quality")).as_py() or 0
            progress.update(rows=batch.num_rows, faces=found)
            for key in pc.unique(batch.column("chunk")).to_pylist():
                rows = batch.filter(pc.equal(batch.column("chunk"), key))
                gathered.setdefault(key, []).append(rows)
                counts[key] += rows.num_rows
                if counts[key] == plans[key].rows:
                    enrolled = _commit(key, plans[key], pa.concat_tables(gathered.pop(key), promote_options="default"),
                                       state, client, description.collection_id, summary, failed,
                                       commit_batch_faces)
                    progress.update(enrolled=enrolled)
    finally:
        progress.close()
    if gathered:
        raise RuntimeError(f"the pipeline ended with incomplete chunks: {sorted(gathered)[:5]}")
    summary.rows_failed = dict(sorted(failed.items()))
    summary.faces_per_s = summary.faces_found / max(time.monotonic() - start, 1e-9)


def _commit(key: str, plan, rows: pa.Table, state: JobState, client: GalleryClient, collection: str,
            summary: EnrollSummary, failed: Counter, commit_batch_faces: int) -> int:
    faces, errors = state.write(key, rows)
    added, skipped = add_faces(client, collection, new_faces(faces), batch_faces=commit_batch_faces)
    reasons = Counter(errors.column("reason").to_pylist())
    state.commit(key, {"manifest": plan.manifest, "start": plan.start, "stop": plan.stop, "rows": plan.rows,
                       "faces": faces.num_rows, "faces_enrolled": added, "faces_already_enrolled": skipped,
                       "rows_failed": dict(reasons)})
    failed.update(reasons)
    summary.rows_processed += plan.rows
    summary.chunks_committed += 1
    summary.faces_enrolled += added
    summary.faces_already_enrolled += skipped
    return added


def _build_index(collection: str, gateway: str, min_growth: float) -> str:
    """The index step; its failure leaves the faces enrolled (and searched exactly or with the old index)."""
    try:
        result = build_index(collection, gateway, min_growth=min_growth)
    except grpc.RpcError as e:
        logger.warning("building the index of %s failed: %s", collection, e)
        return f"failed: {e.code().name} {e.details()}"
    if not result.built:
        return f"not built: {result.reason}"
    # a gateway from before fast-scan sends no pq_bits: its indexes have 8-bit codes
    return f"built {ivfpq_factory(result.nlist, result.pq_m, result.pq_bits or 8)} on {result.trained_on} faces " \
           f"({result.reason})"


def main(argv: list[str] | None = None) -> EnrollSummary:
    summary = flags.run(enroll, argv, "python -m jobs.enroll")
    failed = ", ".join(f"{reason} {n}" for reason, n in summary.rows_failed.items()) or "none"
    print(f"{summary.rows_read} rows read ({summary.rows_already_committed} already committed), "
          f"{summary.faces_enrolled} faces enrolled ({summary.faces_already_enrolled} already there), "
          f"rows failed: {failed}; index: {summary.index or 'step skipped'}", flush=True)
    print(json.dumps(asdict(summary)), flush=True)
    return summary


if __name__ == "__main__":
    main()
