"""Calibration from a labelled set: how the face model scores these people, and the calibration a collection then uses.

    python -m jobs.calibrate --manifest ./labelled/faces.parquet --output ./calibration-out \\
        [--group-columns age_band,skin_tone] [--collection staff --gateway 127.0.0.1:50051]

The manifest is Parquet with an `image_uri` (a path or s3://bucket/key) and a `person_id` per row,
and optional group columns. Each image's largest face is embedded by the gateway's own face code
(`FaceWorker`, the default model); rows whose image cannot be read or holds no face are counted, not
scored. From every pair of faces the job measures:

- genuine (same person) and impostor (different persons) score distributions, and FMR/FNMR over a
  grid of thresholds (FMR(t): impostor pairs scoring >= t; FNMR(t): genuine pairs scoring < t);
- 1:N identification as NIST FRTE reports it: the first face of each person is enrolled, every other
  face of an enrolled person is a mated search, and the same face searched with its own person left
  out of the gallery is a non-mated one. Rank-1 identification rate: mated searches whose best
  candidate is their person. FNIR at a target FPIR: mated searches whose person is not the best
  candidate at or above the threshold that FPIR gives at this gallery's size (derived as the server
  derives it, from this set's calibration); the FPIR measured at that threshold is reported beside it;
- per group (each value of each group column, pairs of two faces of that value): the same figures
  at one threshold for the whole set, as NIST reports demographic differentials.

It writes `report.json`, `scores.png` (score histograms and FMR/FNMR curves) and `calibration.npz`
(the impostor summary and genuine scores, readable by `Calibration.from_table`) to `output`, and with
`collection`, makes the calibration that collection's (SetCalibration; source JOB): its thresholds and
false-match estimates follow from it from then on. Results are for human review of candidates, never
identifications. Flags are `calibrate`'s keyword arguments (cluster/api/flags.py).
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from cluster.api import flags
from cluster.api.limits import MAX_S3_IMAGE_BYTES
from cluster.faces.scores import pair_scores
from cluster.faces.worker import FaceWorker
from cluster.index.calibration import Calibration
from jobs.commit import gateway_client
from jobs.fetch import read_image
from jobs.progress import timed
from jobs.storage import filesystem, resolve

logger = logging.getLogger(__name__)
THRESHOLDS = np.round(np.linspace(-1.0, 1.0, 401), 3)  # the FMR/FNMR grid, 0.005 apart


@dataclass
class CalibrationReport:
    """What a run measured; `report.json` is this, as JSON."""

    model: str
    rows: int
    faces: int
    identities: int
    failed: dict[str, int]  # reason → rows not scored
    genuine_pairs: int
    impostor_pairs: int
    genuine_quantiles: dict[str, float]
    impostor_quantiles: dict[str, float]
    curves: dict[str, list[float]]  # threshold, fmr, fnmr
    identification: dict  # gallery_size, mated/non-mated searches, rank-1 rate, FNIR and FPIR at target_fpir
    operating_point: dict  # the one threshold of the group breakdown: at target_fmr
    groups: dict[str, dict[str, dict]] = field(default_factory=dict)  # column → value → figures
    output: str = ""
    collection: str = ""


def _read_manifest(manifest: str, s3_endpoint: str, group_columns: list[str]) -> dict[str, list[str]]:
    fs, path = filesystem(manifest, s3_endpoint)
    table = pq.read_table(path, filesystem=fs)
    missing = {"image_uri", "person_id", *group_columns} - set(table.column_names)
    if missing:
        raise ValueError(f"manifest {manifest!r} lacks column(s) {sorted(missing)}; it has {table.column_names}")
    columns = {name: ["" if v is None else str(v) for v in table.column(name).to_pylist()]
               for name in ("image_uri", "person_id", *group_columns)}
    columns["image_uri"] = [resolve(uri, manifest) for uri in columns["image_uri"]]
    return columns


def _embed(columns: dict[str, list[str]], worker: FaceWorker, s3_endpoint: str, max_image_bytes: int
           ) -> tuple[np.ndarray, list[int], dict[str, int]]:
    """Embeddings of each row's largest face, the rows they came from, and failures by reason."""
    xb, rows, failed = [], [], {}
    for i, (uri, person) in enumerate(zip(columns["image_uri"], columns["person_id"])):
        reason = "no_person_id" if not person else ""
        if not reason:
            data, reason, message = read_image(uri, s3_endpoint=s3_endpoint, max_bytes=max_image_bytes)
        if not reason:
            try:
                faces = worker.analyze(data, max_faces=1, max_bytes=max_image_bytes).faces
                reason = "" if faces else "no_face"
            except ValueError:  # InvalidImageError
                reason = "invalid_image"
        if reason:
            failed[reason] = failed.get(reason, 0) + 1
            continue
        xb.append(faces[0].embedding)
        rows.append(i)
    return (np.stack(xb).astype(np.float32) if xb else np.empty((0, worker.model.dimension), np.float32)), rows, failed


def _quantiles(scores: np.ndarray) -> dict[str, float]:
    if scores.size == 0:
        return {}
    pcts = (0, 1, 5, 50, 95, 99, 99.9, 100)
    return {str(p): round(float(v), 4) for p, v in zip(pcts, np.percentile(scores, pcts))}


def _rates(genuine: np.ndarray, impostor: np.ndarray, t: float) -> dict:
    return {"threshold": round(float(t), 4), "genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor.size),
            "fmr": float(np.mean(impostor >= t)) if impostor.size else None,
            "fnmr": float(np.mean(genuine < t)) if genuine.size else None}


def identification(xb: np.ndarray, persons: np.ndarray, calibration: Calibration, target_fpir: float) -> dict:
    """Rank-1 identification rate, and FNIR and measured FPIR at the threshold `target_fpir` gives (see module doc).

    The gallery is the first face of each person; mated searches are the other faces of those persons.
    """
    _, first = np.unique(persons, return_index=True)
    gallery = np.zeros(len(persons), bool)
    gallery[first] = True
    probes = np.flatnonzero(~gallery)
    n_gallery = int(gallery.sum())
    threshold = calibration.threshold_for_fpir(target_fpir, n_gallery)
    out = {"gallery_size": n_gallery, "mated_searches": int(probes.size), "target_fpir": target_fpir,
           "threshold": round(threshold.similarity, 4), "fpir_bound": threshold.fpir_bound,
           "threshold_certified": threshold.met}
    if probes.size == 0 or n_gallery < 2:
        return {**out, "rank1_rate": None, "fnir": None, "fpir_measured": None}
    scores = xb[probes] @ xb[gallery].T  # probes × gallery
    gallery_persons = persons[gallery]
    mate = gallery_persons[None, :] == persons[probes][:, None]
    best = np.argmax(scores, axis=1)
    hit = mate[np.arange(probes.size), best]
    above = scores[np.arange(probes.size), best] >= threshold.similarity
    non_mated_top = np.where(mate, -np.inf, scores).max(axis=1)  # the same probe, its person not enrolled
    return {**out, "rank1_rate": float(hit.mean()), "fnir": float(1.0 - np.mean(hit & above)),
            "non_mated_searches": int(probes.size),
            "fpir_measured": float(np.mean(non_mated_top >= threshold.similarity))}


def _groups(xb: np.ndarray, persons: np.ndarray, columns: dict[str, list[str]], rows: list[int],
            group_columns: list[str], threshold: float) -> dict[str, dict[str, dict]]:
    """Per value of each group column: FMR and FNMR at `threshold` over pairs of two faces of that value."""
    out = {}
    for column in group_columns:
        values = np.array([columns[column][r] for r in rows])
        out[column] = {}
        for value in sorted(set(values)):
            keep = values == value
            genuine, impostor = pair_scores(xb[keep], persons[keep]) if keep.sum() > 1 else (np.empty(0), np.empty(0))
            out[column][value] = {"faces": int(keep.sum()), **_rates(genuine, impostor, threshold)}
    return out


def plot(genuine: np.ndarray, impostor: np.ndarray, curves: dict, title: str, width: int = 900) -> bytes:
    """A PNG: score histograms (genuine green, impostor red) above FMR and FNMR against the threshold, log scale."""
    height, margin = 640, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 10), title, fill="black")
    panels = ((margin, 40, width - margin, 300), (margin, 350, width - margin, height - margin))

    def x_of(s, box):
        return box[0] + (s + 1.0) / 2.0 * (box[2] - box[0])

    for box in panels:
        draw.rectangle(box, outline="black")
        for s in (-1.0, -0.5, 0.0, 0.5, 1.0):
            draw.line((x_of(s, box), box[3], x_of(s, box), box[3] + 5), fill="black")
            draw.text((x_of(s, box) - 10, box[3] + 8), f"{s:g}", fill="black")
    box = panels[0]
    edges = np.linspace(-1.0, 1.0, 101)
    for scores, colour in ((impostor, (200, 40, 40)), (genuine, (30, 150, 30))):
        if scores.size:
            density = np.histogram(scores, edges)[0] / scores.size
            top = density.max() or 1.0
            centres = (edges[:-1] + edges[1:]) / 2
            draw.line([(x_of(c, box), box[3] - d / top * (box[3] - box[1] - 10)) for c, d in zip(centres, density)],
                      fill=colour, width=2)
    draw.text((box[0] + 5, box[1] + 5), "score density: genuine (green), impostor (red)", fill="black")
    box = panels[1]
    floor = 1e-6  # log scale from 1e-6 to 1

    def y_of(rate):
        return box[3] - (np.log10(max(rate, floor)) - np.log10(floor)) / -np.log10(floor) * (box[3] - box[1])

    for name, colour in (("fmr", (200, 40, 40)), ("fnmr", (30, 150, 30))):
        points = [(x_of(t, box), y_of(r)) for t, r in zip(curves["threshold"], curves[name]) if r is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    for p in range(0, 7):
        y = y_of(10.0 ** -p)
        draw.line((box[0] - 5, y, box[0], y), fill="black")
        draw.text((5, y - 6), f"1e-{p}", fill="black")
    draw.text((box[0] + 5, box[1] + 5), "FMR (red), FNMR (green) against the threshold", fill="black")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _write(output: str, s3_endpoint: str, name: str, data: bytes) -> str:
    fs, path = filesystem(output, s3_endpoint)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(posixpath.join(path, name)) as f:
        f.write(data)
    return posixpath.join(output, name)


def calibrate(manifest: str, output: str, collection: str = "", gateway: str = "127.0.0.1:50051",
              s3_endpoint: str = "", group_columns: str = "", target_fpir: float = 0.01, target_fmr: float = 1e-3,
              batch_size: int = 32, device: str = "", max_image_bytes: int = MAX_S3_IMAGE_BYTES) -> CalibrationReport:
    """Measures the face model on a labelled manifest, writes the report, and optionally calibrates a collection.

    Args:
        manifest: Parquet file with image_uri and person_id columns (a path or s3://bucket/key).
        output: folder for report.json, scores.png and calibration.npz (a path or s3://bucket/prefix).
        collection: a face collection of the gateway to make this calibration its own; "" for none.
        gateway: host:port of the gallery.v1 gateway (token in $GALLERY_AUTH_TOKEN).
        s3_endpoint: S3 endpoint URL; "" for AWS_ENDPOINT_URL, else AWS.
        group_columns: comma-separated manifest columns to break the figures down by.
        target_fpir: the FPIR at which FNIR is reported, in (0, 1).
        target_fmr: the FMR whose threshold (from this set's calibration) the group breakdown uses, in (0, 1).
        batch_size: crops per forward pass of the face model.
        device: torch device ("cuda", "cpu"); "" for CUDA when present.
        max_image_bytes: larger images are not read.

    Returns:
        The report, also written to output/report.json.

    Raises:
        ValueError: a bad argument or manifest, fewer than 10 impostor pairs, or a collection of another model.
    """
    for name, value in (("target_fpir", target_fpir), ("target_fmr", target_fmr)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    groups = [c for c in group_columns.split(",") if c]
    columns = _read_manifest(manifest, s3_endpoint, groups)
    worker = FaceWorker(batch_size=batch_size, device=device or None)
    model = worker.model
    if collection:  # fail before the costly part
        with gateway_client(gateway) as client:
            d = client.describe(collection)
        if d.embedding_model != model.name:
            raise ValueError(f"collection {collection!r} holds {d.embedding_model or 'raw'} embeddings; this job "
                             f"measures {model.name}")
    with timed(f"embed {len(columns['image_uri'])} images"):
        xb, rows, failed = _embed(columns, worker, s3_endpoint, max_image_bytes)
    persons = np.array([columns["person_id"][r] for r in rows])
    genuine, impostor = pair_scores(xb, persons) if len(rows) > 1 else (np.empty(0), np.empty(0))
    if impostor.size < 10:
        raise ValueError(f"{impostor.size} impostor pairs from {len(rows)} faces: a calibration needs at least 10")
    calibration = Calibration.from_scores(impostor, source="job")
    fmr_threshold = calibration.threshold_for_fpir(target_fmr, 1).similarity
    curves = {"threshold": THRESHOLDS.tolist(),
              "fmr": [float(np.mean(impostor >= t)) for t in THRESHOLDS],
              "fnmr": [float(np.mean(genuine < t)) if genuine.size else None for t in THRESHOLDS]}
    report = CalibrationReport(
        model=model.name, rows=len(columns["image_uri"]), faces=len(rows), identities=len(set(persons)),
        failed=failed, genuine_pairs=int(genuine.size), impostor_pairs=int(impostor.size),
        genuine_quantiles=_quantiles(genuine), impostor_quantiles=_quantiles(impostor), curves=curves,
        identification=identification(xb, persons, calibration, target_fpir),
        operating_point={"target_fmr": target_fmr, **_rates(genuine, impostor, fmr_threshold)},
        groups=_groups(xb, persons, columns, rows, groups, fmr_threshold), output=output)
    table = io.BytesIO()
    np.savez_compressed(table, model=model.name, n_pairs=calibration.n_pairs, tail=calibration.tail,
                        quantiles=calibration.quantiles, genuine=genuine.astype(np.float32))
    _write(output, s3_endpoint, "calibration.npz", table.getvalue())
    _write(output, s3_endpoint, "scores.png", plot(genuine, impostor, curves,
                                                    f"{model.name}: {len(rows)} faces of {report.identities} people"))
    if collection:
        with gateway_client(gateway) as client:
            client.set_calibration(collection, calibration)
        report.collection = collection
        logger.info("%s: calibrated from %d impostor pairs", collection, calibration.n_pairs)
    _write(output, s3_endpoint, "report.json", json.dumps(asdict(report), indent=1).encode())
    return report


def main(argv: list[str] | None = None) -> CalibrationReport:
    report = flags.run(calibrate, argv, "python -m jobs.calibrate")
    summary = {k: v for k, v in asdict(report).items() if k != "curves"}
    print(f"{report.faces} faces of {report.identities} people: {report.genuine_pairs} genuine, "
          f"{report.impostor_pairs} impostor pairs; rank-1 {report.identification['rank1_rate']}, "
          f"FNIR {report.identification['fnir']} at FPIR {report.identification['target_fpir']}")
    print(json.dumps(summary), flush=True)
    return report


if __name__ == "__main__":
    main()
