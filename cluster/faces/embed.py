"""Embedders: batched face crops in, L2-normalised float32 vectors out."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .align import ARCFACE_TEMPLATE_112, template_for

logger = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """What the pipeline needs from a face model.

    Attributes:
        name: model identifier stored with every vector (a gallery never mixes models).
        dimension: length of each embedding.
        input_size: side of the square aligned crop the model takes, in pixels.
        template: 5×2 landmark positions in that crop (see `align.align_face`).
        default_threshold: cosine similarity above which two faces are called a
            match by default, or None when the model has no calibration.
    """

    name: str
    dimension: int
    input_size: int
    template: np.ndarray
    default_threshold: float | None

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Map N×S×S×3 uint8 RGB crops to N×dimension float32 unit vectors."""
        ...


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TorchEmbedder:
    """Runs any torch module as an `Embedder`: batching, normalisation, device placement.

    Args:
        module: maps N×3×S×S float tensors to N×dimension embeddings.
        name: model identifier.
        dimension: embedding length, in [1, 65536].
        input_size: crop side S in pixels, in [16, 1024].
        template: 5×2 landmarks for an S×S crop; default: the FaceNet template scaled to S.
        mean, std: input pixel x (0–255) enters the model as (x - mean) / std.
        channels: "RGB" or "BGR", the order the model was trained on.
        batch_size: crops per forward pass, in [1, 4096].
        device: torch device; default CUDA when present, else CPU.
        default_threshold: calibrated match threshold on cosine similarity, if known.
    """

    def __init__(self, module: torch.nn.Module, *, name: str, dimension: int, input_size: int,
                 template: np.ndarray | None = None, mean: float = 127.5, std: float = 128.0,
                 channels: str = "RGB", batch_size: int = 32, device: str | torch.device | None = None,
                 default_threshold: float | None = None):
        if not 1 <= dimension <= 65536:
            raise ValueError(f"dimension must be in [1, 65536], got {dimension}")
        if not 16 <= input_size <= 1024:
            raise ValueError(f"input_size must be in [16, 1024] pixels, got {input_size}")
        if not 1 <= batch_size <= 4096:
            raise ValueError(f"batch_size must be in [1, 4096], got {batch_size}")
        if channels not in ("RGB", "BGR"):
            raise ValueError(f"channels must be 'RGB' or 'BGR', got {channels!r}")
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        if default_threshold is not None and not -1.0 <= default_threshold <= 1.0:
            raise ValueError(f"default_threshold must be a cosine in [-1, 1], got {default_threshold}")
        self.name, self.dimension, self.input_size = name, dimension, input_size
        self.template = template_for(input_size) if template is None else np.asarray(template, np.float32)
        if self.template.shape != (5, 2):
            raise ValueError(f"template must be 5×2, got {self.template.shape}")
        self.mean, self.std, self.channels, self.batch_size = mean, std, channels, batch_size
        self.default_threshold = default_threshold
        self.device = torch.device(device) if device is not None else default_device()
        self.module = module.to(self.device)
        try:
            self.module.eval()
        except NotImplementedError:  # torch.export programs are frozen in eval mode and refuse it
            pass

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embed aligned crops in batches of `batch_size`.

        Args:
            crops: N×S×S×3 uint8 RGB crops from `align_face` (N may be 0).

        Returns:
            N×dimension float32, each row of unit L2 norm.

        Raises:
            ValueError: crops of the wrong shape or dtype, or a model output of
                the wrong dimension.
        """
        s = self.input_size
        if crops.ndim != 4 or crops.shape[1:] != (s, s, 3) or crops.dtype != np.uint8:
            raise ValueError(f"crops must be N×{s}×{s}×3 uint8, got {crops.shape} {crops.dtype}")
        out = np.empty((len(crops), self.dimension), np.float32)
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[i:i + self.batch_size])).to(self.device)
                if self.channels == "BGR":
                    x = x.flip(-1)
                x = (x.permute(0, 3, 1, 2).float() - self.mean) / self.std
                y = self.module(x)
                if y.ndim != 2 or y.shape[1] != self.dimension:
                    raise ValueError(f"{self.name} returned shape {tuple(y.shape)}, "
                                     f"expected (N, {self.dimension})")
                out[i:i + len(x)] = F.normalize(y.float(), dim=1).cpu().numpy()
        return out


def load_torch_model(path: Path, device: torch.device) -> torch.nn.Module:
    """Load a TorchScript file (`torch.jit.save`) or, for `.pt2`, a `torch.export` program."""
    if path.suffix == ".pt2":
        return torch.export.load(str(path)).module()
    with warnings.catch_warnings():
        # torch ≥ 2.10 deprecates TorchScript, but operators' models still ship in it.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location=device)


class TorchScriptEmbedder(TorchEmbedder):
    """An operator's own model (e.g. an ArcFace they licence) in a TorchScript or `.pt2` file.

    The file is either TorchScript (`torch.jit.save`) or, when its name ends in
    `.pt2`, a `torch.export` program exported with a dynamic batch dimension.

    For ArcFace-family models (112 px, (x − 127.5) / 127.5, InsightFace template)
    pass `input_size=112, std=127.5, template=ARCFACE_TEMPLATE_112`; that template is
    also the default whenever `input_size` is 112.

    Args:
        path: the model file.
        dimension: embedding length the model outputs.
        input_size: crop side in pixels.
        **kwargs: as for `TorchEmbedder` (name defaults to the file name).

    Raises:
        FileNotFoundError: `path` does not exist.

    Example:
        >>> emb = TorchScriptEmbedder("arcface_r100.pt", 512, 112, std=127.5,
        ...                           default_threshold=0.3)
        >>> emb.embed(crops).shape
        (4, 512)
    """

    def __init__(self, path: str | Path, dimension: int, input_size: int, **kwargs):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TorchScript model not found: {path}")
        if input_size == 112 and kwargs.get("template") is None:
            kwargs["template"] = ARCFACE_TEMPLATE_112
        kwargs.setdefault("name", path.stem)
        device = torch.device(kwargs.pop("device", None) or default_device())
        module = load_torch_model(path, device)
        super().__init__(module, dimension=dimension, input_size=input_size, device=device, **kwargs)
        logger.info("loaded embedder %s (%d-d, %d px) on %s", self.name, dimension,
                    input_size, self.device)

