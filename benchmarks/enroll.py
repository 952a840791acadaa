"""Bulk enrollment end to end: faces per second from a manifest to faces committed in a running gateway.

A local manifest cycles through the real test photos (six portraits, a six-person
photo and the 29-face 1927 Solvay photo: ~5 enrollable faces per image) under
distinct external ids; each repeat enrolls it into a fresh collection of an
in-process gateway (2 shards) with `jobs.enroll.enroll`, which reads, fetches,
detects, embeds, writes each chunk's faces and commits. One warm-up run first (Ray workers,
model weights cache); then the median of `repeats` runs. On GPUs the actors are one
per GPU and the figure is also given per GPU. Prints a line per run, then one JSON line.

    python benchmarks/enroll.py [--images 96] [--repeats 3] [--num-actors 0] [--images-per-batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from host import describe  # benchmarks/host.py

from cluster.gateway.gallery import Gallery
from cluster.serve import runtime
from cluster.serve.server import running_server
from cluster.shards.ray_shards import RayShards
from cluster.storage.object_store import ObjectStore
from jobs.enroll import enroll

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "faces"
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "gauss.webp", "newton.png", "t1.jpg",
          "solvay_conference_1927.jpg")


def _manifest(folder: Path, images: int) -> Path:
    rows = [{"image_uri": str(DATA / PHOTOS[i % len(PHOTOS)]), "external_image_id": f"bench-{i}"}
            for i in range(images)]
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    return folder


def main(images: int = 96, repeats: int = 3, num_actors: int = 0, images_per_batch: int = 16) -> dict:
    if images < 1 or repeats < 1:
        raise ValueError(f"images and repeats must be >= 1, got {images} and {repeats}")
    runtime.start_ray("local")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    num_actors = num_actors or (gpus or max(1, min(2, os.cpu_count() or 1)))
    work = Path(tempfile.mkdtemp(prefix="bench-enroll-"))
    shards = RayShards.start(2, str(work / "store"), cluster_name=f"bench-{uuid.uuid4().hex[:6]}", num_cpus=0.25)
    gallery = Gallery(ObjectStore(str(work / "store")), shards)
    warmup, manifest = _manifest(work / "warmup", len(PHOTOS)), _manifest(work / "manifest", images)
    runs = []
    try:
        with running_server(gallery, "127.0.0.1:0") as (_, port):
            # Raw collections of the default model's size (SFace, 128-d): this gateway runs no face model.
            job = dict(gateway=f"127.0.0.1:{port}", output=str(work / "out"), dimension=128, num_actors=num_actors,
                       images_per_batch=images_per_batch, build_index_min_growth=0.0)
            enroll(str(warmup), "warmup", **job)
            for r in range(repeats):
                summary = enroll(str(manifest), f"run{r}", **job)
                runs.append({"faces": summary.faces_enrolled, "elapsed_s": round(summary.elapsed_s, 2),
                             "faces_per_s": round(summary.faces_enrolled / summary.elapsed_s, 2),
                             "pipeline_faces_per_s": round(summary.faces_per_s, 2)})
                print(f"run {r}: {summary.faces_enrolled} faces from {images} images in {summary.elapsed_s:.1f} s: "
                      f"{runs[-1]['faces_per_s']:.1f} faces/s end to end", flush=True)
    finally:
        gallery.close()
        shards.stop()
    faces_per_s = statistics.median(r["faces_per_s"] for r in runs)
    result = {"benchmark": "enroll", "machine": describe(ray=ray.__version__), "images": images, "faces": runs[0]["faces"],
              "num_actors": num_actors, "device": "cuda" if gpus else "cpu", "images_per_batch": images_per_batch,
              "repeats": repeats, "faces_per_s": round(faces_per_s, 2),
              "images_per_s": round(faces_per_s * images / max(runs[0]["faces"], 1), 2),
              "faces_per_s_per_gpu": round(faces_per_s / gpus, 2) if gpus else None, "runs": runs}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="manifest rows (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (default: %(default)s)")
    parser.add_argument("--num-actors", type=int, default=0, help="embedding actors; 0: one per GPU, else 2")
    parser.add_argument("--images-per-batch", type=int, default=16, help="images per actor call (default: %(default)s)")
    main(**vars(parser.parse_args()))
