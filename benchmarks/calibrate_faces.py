"""Measure FaceNet's genuine and impostor scores on the real test photos; save the impostors.

Writes `cluster/faces/data/facenet_impostor_scores.npy` (float32), which
`cluster.index.calibration.Calibration` reads, and prints a summary ending with one JSON
line. Identities: the three Obama photos are one person; every other face is its
own person (Biden, Gauss, Newton, the six people of the InsightFace photo, and the
29 delegates of the 1927 Solvay conference photo).

    python benchmarks/calibrate_faces.py [--photos-dir tests/data/faces] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from cluster.faces import FaceDetector, FaceNetEmbedder, FacePipeline, decode_image
from cluster.faces.facenet import IMPOSTOR_SCORES_PATH
from cluster.faces.scores import pair_scores, threshold_at_fmr

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# photo → identity prefix; photos of one person share a prefix ("obama").
PHOTOS = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden",
          "gauss.webp": "gauss", "newton.png": "newton", "t1.jpg": "t1-",
          "solvay_conference_1927.jpg": "solvay-"}
GROUPS = ("t1-", "solvay-")  # every face in these photos is a different person


def collect(photos_dir: Path, pipe: FacePipeline) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embed every face of every photo; return (embeddings, identity labels, photo names)."""
    xb, labels, photos = [], [], []
    for name, ident in PHOTOS.items():
        faces = pipe.analyze(decode_image((photos_dir / name).read_bytes(), max_bytes=20 * 2**20))
        if ident not in GROUPS and len(faces) != 1:
            raise RuntimeError(f"{name}: expected one face, found {len(faces)}")
        for k, face in enumerate(faces):
            xb.append(face.embedding)
            labels.append(f"{ident}{k}" if ident in GROUPS else ident)
            photos.append(name)
    return np.stack(xb), np.array(labels), np.array(photos)


def main(photos_dir: str = str(ROOT / "tests/data/faces"), out: str = str(IMPOSTOR_SCORES_PATH),
         max_fmr: float = 0.01) -> dict:
    """Compute scores, save impostors to `out`, return the summary."""
    pipe = FacePipeline(FaceDetector(), FaceNetEmbedder())
    xb, labels, photos = collect(Path(photos_dir), pipe)
    genuine, impostor = pair_scores(xb, labels)
    np.save(out, impostor.astype(np.float32))
    pcts = [50, 90, 99, 100]
    summary = {
        "faces": len(xb), "identities": len(set(labels)),
        "genuine_pairs": len(genuine), "genuine": [round(float(s), 3) for s in np.sort(genuine)],
        "impostor_pairs": len(impostor),
        "impostor_percentiles": dict(zip(map(str, pcts), np.round(np.percentile(impostor, pcts), 3).tolist())),
        "impostor_cross_photo": _stats(_impostor(xb, labels, photos, same_photo=False)),
        "impostor_same_photo": _stats(_impostor(xb, labels, photos, same_photo=True)),
        "fmr_at": {t: round(float(np.mean(impostor >= t)), 4) for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)},
        "candidate_threshold": threshold_at_fmr(impostor, max_fmr),
        "max_fmr": max_fmr, "saved": out,
    }
    return summary


def _impostor(xb: np.ndarray, labels: np.ndarray, photos: np.ndarray, same_photo: bool) -> np.ndarray:
    """Impostor scores between faces of one photo, or of different photos."""
    i, j = np.triu_indices(len(xb), 1)
    keep = (labels[i] != labels[j]) & ((photos[i] == photos[j]) == same_photo)
    return np.einsum("nd,nd->n", xb[i[keep]], xb[j[keep]])


def _stats(scores: np.ndarray) -> dict:
    """Count, median and max of a score array."""
    return {"pairs": len(scores), "median": round(float(np.median(scores)), 3),
            "max": round(float(scores.max()), 3)}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos-dir", default=main.__defaults__[0])
    parser.add_argument("--out", default=main.__defaults__[1])
    parser.add_argument("--max-fmr", type=float, default=main.__defaults__[2])
    args = parser.parse_args()
    print(json.dumps(main(args.photos_dir, args.out, args.max_fmr)))
