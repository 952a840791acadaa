"""Faces per second for detection, and per face model for alignment and embedding, per batch size, on CPU and GPU.

Uses the real test photos: a 2×2 tiling of the 1927 Solvay photo (116 faces of
≈35 px, 2560×1852) and a 6-person colour photo (1280×886). Each figure is the
median of `repeats` timed runs after one warm-up run. Prints a table, then one
JSON line with every figure and the machine it ran on; each model's figures are
one dict under "models", so that other per-model figures (score quantiles, error
rates) can join them.

    python benchmarks/faces.py [--batch-sizes 1,32] [--repeats 3] [--threads 0] [--models sface,facenet-…]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from host import describe  # benchmarks/host.py

from cluster.faces import FaceDetector, FacePipeline, decode_image, embedder_for, model_names

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "faces"


def timeit(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(batch_sizes: str = "1,32", repeats: int = 3, threads: int = 0, models: str = "") -> dict:
    """Run the benchmark; `threads` = 0 keeps torch's default thread count; `models` "" for every registered one."""
    if threads:
        torch.set_num_threads(threads)
    sizes = [int(b) for b in batch_sizes.split(",")]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    solvay = decode_image((DATA / "solvay_conference_1927.jpg").read_bytes())
    small = cv2.resize(solvay, (1280, 926), interpolation=cv2.INTER_AREA)
    images = {"crowd_2560x1852": np.vstack([np.hstack([small, small])] * 2),
              "group_1280x886": decode_image((DATA / "t1.jpg").read_bytes())}
    detector = FaceDetector()
    names = models.split(",") if models else model_names()
    result = {"machine": describe(torch=torch.__version__, torch_threads=str(torch.get_num_threads()),
                                   opencv=cv2.__version__), "detect": {}, "models": {}}

    for name, image in images.items():
        n = len(detector.detect(image, max_faces=1000))
        s = timeit(lambda image=image: detector.detect(image, max_faces=1000), repeats)
        result["detect"][name] = {"faces": n, "seconds": round(s, 4), "faces_per_s": round(n / s, 1)}
        print(f"detect  {name:18s} {n:4d} faces  {s * 1000:8.1f} ms  {n / s:8.1f} faces/s")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    faces = detector.detect(images["crowd_2560x1852"], max_faces=1000)
    for name in names:
        model = result["models"][name] = {"align": {}, "embed": {}}
        for device in devices:
            pipe = FacePipeline(detector, embedder_for(name, device=device, batch_size=max(sizes)))
            model.update(dimension=pipe.embedder.dimension, input_size=pipe.embedder.input_size)
            s = timeit(lambda pipe=pipe: pipe.align(images["crowd_2560x1852"], faces), repeats)
            model["align"][device] = {"faces": len(faces), "faces_per_s": round(len(faces) / s, 1)}
            print(f"align   {name[:12]:12s} {device:5s} {len(faces):4d} faces  {len(faces) / s:8.1f} faces/s")
            crops = pipe.align(images["crowd_2560x1852"], faces)
            model["embed"][device] = {}
            for b in sizes:
                batch = crops[np.arange(b) % len(crops)]
                s = timeit(lambda embed=pipe.embedder.embed, batch=batch: embed(batch), repeats)
                model["embed"][device][str(b)] = round(b / s, 1)
                print(f"embed   {name[:12]:12s} {device:5s} batch {b:4d}  {s * 1000:8.1f} ms  {b / s:8.1f} faces/s")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default=main.__defaults__[0])
    parser.add_argument("--repeats", type=int, default=main.__defaults__[1])
    parser.add_argument("--threads", type=int, default=main.__defaults__[2])
    parser.add_argument("--models", default=main.__defaults__[3], help="comma-separated; default every registered one")
    args = parser.parse_args()
    print(json.dumps(main(args.batch_sizes, args.repeats, args.threads, args.models)))
