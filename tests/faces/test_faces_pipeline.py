"""FacePipeline end to end on real photos: identification, separation, batching."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from cluster.faces import Face, FaceNetEmbedder, FacePipeline, TorchScriptEmbedder, quality_filter_threshold

THRESHOLD = FaceNetEmbedder.default_threshold


def _identity(name: str, k: int) -> str:
    """Photos of one person share an identity; every face of a group photo is its own."""
    return "obama" if name.startswith("obama") else f"{name}#{k}"


@pytest.fixture(scope="module")
def faces(analyzed) -> list[tuple[str, str, Face]]:
    """(photo, identity, face) for every face of every test photo."""
    return [(name, _identity(name, k), f) for name, fs in analyzed.items() for k, f in enumerate(fs)]


def test_counts_and_records(analyzed):
    assert {n: len(fs) for n, fs in analyzed.items()} == {
        "obama.jpg": 1, "obama2.jpg": 1, "obama3.jpg": 1, "biden.jpg": 1, "gauss.webp": 1,
        "newton.png": 1, "t1.jpg": 6, "solvay_conference_1927.jpg": 29}
    face = analyzed["obama.jpg"][0]
    assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
    assert face.landmarks.shape == (5, 2) and 0.9 < face.quality <= 1.0


@pytest.mark.parametrize("probe", ["obama2.jpg", "obama3.jpg"])
def test_same_person_ranks_first(faces, probe):
    """Search one photo of a person against a gallery of 39 faces from the other photos."""
    gallery = [(name, f) for name, _, f in faces if name.startswith("obama") is False or name == "obama.jpg"]
    xb = np.stack([f.embedding for _, f in gallery])
    (xq,) = [f.embedding for name, _, f in faces if name == probe]
    D = xb @ xq
    I = np.argsort(-D)
    assert gallery[I[0]][0] == "obama.jpg"
    assert D[I[0]] >= THRESHOLD > D[I[1]]


def test_several_photos_of_one_person_rank_above_everyone_else(faces):
    xb = np.stack([f.embedding for _, _, f in faces])
    ids = [ident for _, ident, _ in faces]
    for q in (i for i, ident in enumerate(ids) if ident == "obama"):
        order = [j for j in np.argsort(-(xb @ xb[q])) if j != q]
        assert [ids[j] for j in order[:2]] == ["obama", "obama"]


def test_different_people_stay_under_the_default_threshold(faces):
    for (pa, ia, fa), (pb, ib, fb) in itertools.combinations(faces, 2):
        score = float(fa.embedding @ fb.embedding)
        if ia == ib:
            assert score >= THRESHOLD, (pa, pb, score)
        elif pa != pb or pa == "t1.jpg":  # across photos, and within the colour group photo
            assert score < THRESHOLD, (pa, pb, score)


def test_old_grey_group_photo_false_matches_stay_rare(analyzed):
    xb = np.stack([f.embedding for f in analyzed["solvay_conference_1927.jpg"]])
    scores = (xb @ xb.T)[np.triu_indices(len(xb), 1)]
    assert np.mean(scores >= THRESHOLD) <= 0.01  # 406 pairs of 29 different people


def test_batch_across_images_matches_one_by_one(pipeline, photos, analyzed):
    alone = pipeline.analyze(photos["t1.jpg"])
    batched = analyzed["t1.jpg"]
    assert [f.box for f in alone] == [f.box for f in batched]
    assert np.allclose(np.stack([f.embedding for f in alone]), np.stack([f.embedding for f in batched]), atol=1e-5)


def test_quality_filter_then_embed_only_what_is_kept(pipeline, photos, analyzed):
    detected = pipeline.detect(photos["t1.jpg"])
    kept = [f for f in detected if f.quality >= quality_filter_threshold("MEDIUM")]
    assert 0 < len(kept) < len(detected)  # the near-profile face is dropped
    embedded = pipeline.embed_faces(photos["t1.jpg"], kept)
    full = {f.box: f.embedding for f in analyzed["t1.jpg"]}
    assert all(np.allclose(f.embedding, full[f.box], atol=1e-5) for f in embedded)


def test_image_without_faces(pipeline):
    assert pipeline.analyze(np.full((200, 300, 3), 30, np.uint8)) == []
    assert pipeline.analyze_batch([]) == []


def test_pipeline_with_an_operator_model(detector, photos, tmp_path):
    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 2), 1)  # 12-d

    path = tmp_path / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Tiny()), str(path))
    pipe = FacePipeline(detector, TorchScriptEmbedder(path, dimension=12, input_size=112, device="cpu"))
    out = pipe.analyze(photos["t1.jpg"], max_faces=3)
    assert len(out) == 3 and out[0].embedding.shape == (12,)
