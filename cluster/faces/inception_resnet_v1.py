"""FaceNet's Inception-ResNet-v1 in PyTorch, laid out to load a frozen TensorFlow graph.

The layout follows davidsandberg/facenet `models/inception_resnet_v1.py` (itself
Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections"). Batch norm is assumed folded into each convolution's bias, as it is
in the frozen graphs made for inference; every conv keeps its TensorFlow scope in
`tf_scope` so weights map by name (see `load_tf_constants`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Conv(nn.Module):
    """Conv2d + bias (folded batch norm), ReLU unless `relu=False`."""

    def __init__(self, tf_scope: str, cin: int, cout: int, kernel: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0, relu: bool = True):
        super().__init__()
        self.tf_scope = tf_scope
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=True)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x


class _Block35(nn.Module):
    """35×35 residual block (Inception-ResNet-A)."""

    def __init__(self, s: str, scale: float):
        super().__init__()
        self.scale = scale
        self.b0 = _Conv(f"{s}/Branch_0/Conv2d_1x1", 256, 32, 1)
        self.b1 = nn.Sequential(_Conv(f"{s}/Branch_1/Conv2d_0a_1x1", 256, 32, 1),
                                _Conv(f"{s}/Branch_1/Conv2d_0b_3x3", 32, 32, 3, padding=1))
        self.b2 = nn.Sequential(_Conv(f"{s}/Branch_2/Conv2d_0a_1x1", 256, 32, 1),
                                _Conv(f"{s}/Branch_2/Conv2d_0b_3x3", 32, 32, 3, padding=1),
                                _Conv(f"{s}/Branch_2/Conv2d_0c_3x3", 32, 32, 3, padding=1))
        self.up = _Conv(f"{s}/Conv2d_1x1", 96, 256, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([self.b0(x), self.b1(x), self.b2(x)], 1)
        return F.relu(x + self.scale * self.up(mixed))


class _Block17(nn.Module):
    """17×17 residual block (Inception-ResNet-B)."""

    def __init__(self, s: str, scale: float):
        super().__init__()
        self.scale = scale
        self.b0 = _Conv(f"{s}/Branch_0/Conv2d_1x1", 896, 128, 1)
        self.b1 = nn.Sequential(_Conv(f"{s}/Branch_1/Conv2d_0a_1x1", 896, 128, 1),
                                _Conv(f"{s}/Branch_1/Conv2d_0b_1x7", 128, 128, (1, 7), padding=(0, 3)),
                                _Conv(f"{s}/Branch_1/Conv2d_0c_7x1", 128, 128, (7, 1), padding=(3, 0)))
        self.up = _Conv(f"{s}/Conv2d_1x1", 256, 896, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.scale * self.up(torch.cat([self.b0(x), self.b1(x)], 1)))


class _Block8(nn.Module):
    """8×8 residual block (Inception-ResNet-C); the last one has no ReLU."""

    def __init__(self, s: str, scale: float, relu: bool = True):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.b0 = _Conv(f"{s}/Branch_0/Conv2d_1x1", 1792, 192, 1)
        self.b1 = nn.Sequential(_Conv(f"{s}/Branch_1/Conv2d_0a_1x1", 1792, 192, 1),
                                _Conv(f"{s}/Branch_1/Conv2d_0b_1x3", 192, 192, (1, 3), padding=(0, 1)),
                                _Conv(f"{s}/Branch_1/Conv2d_0c_3x1", 192, 192, (3, 1), padding=(1, 0)))
        self.up = _Conv(f"{s}/Conv2d_1x1", 384, 1792, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.scale * self.up(torch.cat([self.b0(x), self.b1(x)], 1))
        return F.relu(x) if self.relu else x


class InceptionResnetV1(nn.Module):
    """FaceNet Inception-ResNet-v1: standardised 160×160 RGB in, L2-normalised embedding out.

    Args:
        dimension: size of the bottleneck embedding (512 for the 2018 FaceNet models).

    Example:
        >>> net = InceptionResnetV1().eval()
        >>> net(torch.zeros(2, 3, 160, 160)).shape
        torch.Size([2, 512])
    """

    def __init__(self, dimension: int = 512):
        super().__init__()
        m = "Mixed_6a", "Mixed_7a"
        self.stem = nn.Sequential(
            _Conv("Conv2d_1a_3x3", 3, 32, 3, stride=2), _Conv("Conv2d_2a_3x3", 32, 32, 3),
            _Conv("Conv2d_2b_3x3", 32, 64, 3, padding=1), nn.MaxPool2d(3, 2),
            _Conv("Conv2d_3b_1x1", 64, 80, 1), _Conv("Conv2d_4a_3x3", 80, 192, 3),
            _Conv("Conv2d_4b_3x3", 192, 256, 3, stride=2))
        self.repeat = nn.Sequential(*[_Block35(f"Repeat/block35_{i}", 0.17) for i in range(1, 6)])
        self.mixed_6a = nn.ModuleList([
            _Conv(f"{m[0]}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, stride=2),
            nn.Sequential(_Conv(f"{m[0]}/Branch_1/Conv2d_0a_1x1", 256, 192, 1),
                          _Conv(f"{m[0]}/Branch_1/Conv2d_0b_3x3", 192, 192, 3, padding=1),
                          _Conv(f"{m[0]}/Branch_1/Conv2d_1a_3x3", 192, 256, 3, stride=2)),
            nn.MaxPool2d(3, 2)])
        self.repeat_1 = nn.Sequential(*[_Block17(f"Repeat_1/block17_{i}", 0.10) for i in range(1, 11)])
        self.mixed_7a = nn.ModuleList([
            nn.Sequential(_Conv(f"{m[1]}/Branch_0/Conv2d_0a_1x1", 896, 256, 1),
                          _Conv(f"{m[1]}/Branch_0/Conv2d_1a_3x3", 256, 384, 3, stride=2)),
            nn.Sequential(_Conv(f"{m[1]}/Branch_1/Conv2d_0a_1x1", 896, 256, 1),
                          _Conv(f"{m[1]}/Branch_1/Conv2d_1a_3x3", 256, 256, 3, stride=2)),
            nn.Sequential(_Conv(f"{m[1]}/Branch_2/Conv2d_0a_1x1", 896, 256, 1),
                          _Conv(f"{m[1]}/Branch_2/Conv2d_0b_3x3", 256, 256, 3, padding=1),
                          _Conv(f"{m[1]}/Branch_2/Conv2d_1a_3x3", 256, 256, 3, stride=2)),
            nn.MaxPool2d(3, 2)])
        self.repeat_2 = nn.Sequential(*[_Block8(f"Repeat_2/block8_{i}", 0.20) for i in range(1, 6)],
                                      _Block8("Block8", 1.0, relu=False))
        self.bottleneck = nn.Linear(1792, dimension)  # its batch norm folded in by the loader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.repeat(self.stem(x))
        x = torch.cat([branch(x) for branch in self.mixed_6a], 1)
        x = self.repeat_1(x)
        x = torch.cat([branch(x) for branch in self.mixed_7a], 1)
        x = self.repeat_2(x)
        x = self.bottleneck(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return F.normalize(x, dim=1, eps=1e-5)  # the graph clamps sum(x²) at 1e-10


def load_tf_constants(net: InceptionResnetV1, consts: dict[str, np.ndarray],
                      prefix: str = "InceptionResnetV1/") -> None:
    """Copy a frozen graph's constants into `net`, by TensorFlow scope name.

    Args:
        net: the module to fill.
        consts: constant tensors of the frozen graph, by node name.
        prefix: scope of the network inside the graph.

    Raises:
        KeyError: a weight the architecture needs is missing from `consts`.
        ValueError: a constant's shape does not match the architecture.
    """
    def put(param: torch.Tensor, value: np.ndarray, name: str) -> None:
        if tuple(param.shape) != value.shape:
            raise ValueError(f"{name}: graph has shape {value.shape}, model expects {tuple(param.shape)}")
        param.data.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))

    def const(name: str) -> np.ndarray:
        if name not in consts:
            raise KeyError(f"frozen graph has no constant {name!r}")
        return consts[name]

    for module in net.modules():
        if isinstance(module, _Conv):
            s = prefix + module.tf_scope
            put(module.conv.weight, const(f"{s}/weights").transpose(3, 2, 0, 1), f"{s}/weights")  # HWIO→OIHW
            bias = consts.get(f"{s}/Conv2D_bn_offset")
            put(module.conv.bias, bias if bias is not None else const(f"{s}/biases"), f"{s}/bias")
    # Bottleneck: y = BN(x W) = (x W - mean) * gamma / sqrt(var + eps) + beta.
    bn = prefix + "Bottleneck/BatchNorm/"
    gamma, beta = const(bn + "Const"), const(bn + "beta")
    mean, var = const(bn + "moving_mean"), const(bn + "moving_variance")
    k = gamma / np.sqrt(var + 1e-3)  # the graph's FusedBatchNorm epsilon
    put(net.bottleneck.weight, (const(prefix + "Bottleneck/weights") * k).T, "Bottleneck/weights")
    put(net.bottleneck.bias, beta - mean * k, "Bottleneck/bias")
