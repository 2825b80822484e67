"""ST-LPIPS: a perceptual distance that ships its weights, so it works offline.

Shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022) with its AlexNet trunk. The ``stlpips-pytorch``
wheel carries the trained weights, but its modules import torchvision (which cannot be installed
beside this project's torch build) for networks this variant never uses. So the network is
written here, module for module as the wheel builds it (blur-pooled AlexNet, per-layer 1×1
"lin" heads), and loads the wheel's weight file with ``torch.load(weights_only=True)``.
``tests/test_perceptual.py`` checks it against the wheel's own code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS = Path("weights", "vST0.0", "alex_shift_tolerant.pth")
LABELS = {"lpips": "LPIPS", "st_lpips": "ST-LPIPS"}
# The smallest image side each network reaches its last layer on. The original AlexNet's stem is an 11-px conv of
# stride 4 followed by two 3-px max pools of stride 2 (31 px → 7 → 3 → 1); ST-LPIPS's stem has stride 1 and
# blur pools that reflect-pad by 2, which needs more than 2 px (21 px → 15 → 9 → 7 → 5 → 3 at the last blur pool).
SMALLEST_SIDE = {"lpips": 31, "st_lpips": 21}


def weights_path() -> Path | None:
    spec = importlib.util.find_spec("stlpips_pytorch")  # locate without importing (its import needs torchvision)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / WEIGHTS
    return path if path.exists() else None


def available() -> bool:
    return weights_path() is not None


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect-pad by 2, then a depthwise [1 2 1]ᵀ[1 2 1]/16 filter."""

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class _Trunk(nn.Module):
    """AlexNet with blur pooling and a stride-1 first conv; five feature taps, as ``slice1``..``slice5``."""

    def __init__(self):
        super().__init__()
        layers = [
            nn.Conv2d(3, 64, 11, stride=1, padding=2), BlurPool(64), nn.ReLU(),
            nn.MaxPool2d(3, stride=1), BlurPool(64), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
            nn.MaxPool2d(3, stride=1), BlurPool(192), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        ]
        # layer indices stay global across slices, as in the weight file
        for number, (start, stop) in enumerate([(0, 3), (3, 7), (7, 11), (11, 13), (13, 15)], start=1):
            piece = nn.Sequential()
            for index in range(start, stop):
                piece.add_module(str(index), layers[index])
            setattr(self, f"slice{number}", piece)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for number in range(1, 6):
            x = getattr(self, f"slice{number}")(x)
            features.append(x)
        return features


class _Linear(nn.Module):
    """LPIPS's learned per-channel weighting of squared feature differences (a bias-free 1×1 conv)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class STLPIPS(nn.Module):
    """Perceptual distance between images in [-1, 1]; one value per image (lower is more alike). Frozen."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = path or weights_path()
        if path is None:
            raise FileNotFoundError(
                "ST-LPIPS weights not found: pip install stlpips-pytorch (it ships them; nothing is downloaded)"
            )
        self.scaling_layer = _Scaling()
        self.net = _Trunk()
        for i, channels in enumerate((64, 192, 384, 256, 256)):
            setattr(self, f"lin{i}", _Linear(channels))
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> STLPIPS:
        return super().train(False)  # dropout in the heads must stay off, even inside a training model

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        features_a, features_b = self.net(self.scaling_layer(a)), self.net(self.scaling_layer(b))
        distance = 0.0
        for i, (fa, fb) in enumerate(zip(features_a, features_b, strict=True)):
            fa = fa / (fa.square().sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.square().sum(1, keepdim=True).sqrt() + 1e-10)
            distance = distance + getattr(self, f"lin{i}")((fa - fb).square()).mean([2, 3])
        return distance.flatten()


class _LPIPS(nn.Module):
    """The original LPIPS (AlexNet, v0.1) as ``lpips`` ships it: one distance per image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b).flatten()


def original_lpips() -> nn.Module | None:
    """The original LPIPS when it can run offline: the ``lpips`` package (which needs torchvision) and its AlexNet
    backbone already in torch's hub cache. None otherwise (nothing is downloaded)."""
    if not _original_available():
        return None
    import lpips

    return _LPIPS(lpips.LPIPS(net="alex", verbose=False))


def _original_available() -> bool:
    try:
        import lpips  # noqa: F401 - imports torchvision, which may not import beside this torch
    except Exception:  # noqa: BLE001 - any failure means: not available here
        return False
    return Path(torch.hub.get_dir(), "checkpoints", "alexnet-owt-7be5be79.pth").exists()


def distance_name() -> str | None:
    """The perceptual distance ``perceptual_distance`` gives: "lpips", "st_lpips", or None (neither installed)."""
    if _original_available():
        return "lpips"
    return "st_lpips" if available() else None


def perceptual_distance() -> tuple[str, nn.Module] | None:
    """(metric name, distance module): the original LPIPS where available, else ST-LPIPS, else None."""
    name = distance_name()
    if name == "lpips":
        return name, original_lpips()
    return (name, STLPIPS()) if name else None
