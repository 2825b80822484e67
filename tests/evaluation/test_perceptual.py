"""Our ST-LPIPS network against the stlpips-pytorch wheel's own code, on the wheel's own weights."""

import subprocess
import sys
import textwrap

import pytest
import torch

from sd_custom_vae.evaluation import perceptual

pytestmark = pytest.mark.skipif(not perceptual.available(), reason="the 'perceptual' extra is not installed")

# The wheel's modules import torchvision, torchsummary and IPython at the top but never use them for the
# shift-tolerant AlexNet. In a separate process (so nothing leaks into the test session), empty stand-ins
# for those three names let the wheel's own LPIPS class run as the reference.
REFERENCE = textwrap.dedent(
    """
    import sys, types, torch
    for name in ("torchvision", "torchvision.models", "torchsummary", "IPython"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["torchsummary"].summary = sys.modules["IPython"].embed = None
    from stlpips_pytorch import stlpips
    model = stlpips.LPIPS(net="alex", variant="shift_tolerant", verbose=False)
    a, b = torch.load(sys.argv[1], weights_only=True)
    with torch.no_grad():
        torch.save(model(a, b).flatten(), sys.argv[2])
    """
)


def test_matches_the_wheels_own_implementation(tmp_path):
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 64, 48, generator=generator) * 2 - 1
    b = (a + 0.2 * torch.randn(a.shape, generator=generator)).clamp(-1, 1)
    torch.save((a, b), tmp_path / "inputs.pt")
    subprocess.run([sys.executable, "-c", REFERENCE, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")], check=True)
    expected = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        got = perceptual.STLPIPS()(a, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_is_a_distance_and_differentiable():
    metric = perceptual.STLPIPS()
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    assert metric(a, a).abs().max().item() < 1e-6
    b = (a + 0.3).clamp(-1, 1).requires_grad_(True)
    distance = metric(a, b)
    assert (distance > 0).all()
    distance.sum().backward()
    assert b.grad is not None and all(not p.requires_grad for p in metric.parameters())
    metric.train()
    assert not metric.training  # dropout stays off


def test_the_smallest_side_each_network_runs_on_is_exact():
    zeros = {side: torch.zeros(1, 3, side, side) for side in (20, 21, 30, 31)}
    least = perceptual.SMALLEST_SIDE["st_lpips"]
    perceptual.STLPIPS()(zeros[least], zeros[least])
    with pytest.raises(RuntimeError):
        perceptual.STLPIPS()(zeros[least - 1], zeros[least - 1])
    # the original LPIPS's AlexNet (torchvision's): what shrinks an image is its stem, up to the second max pool
    stem = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 11, stride=4, padding=2), torch.nn.MaxPool2d(3, stride=2),
                               torch.nn.Conv2d(64, 192, 5, padding=2), torch.nn.MaxPool2d(3, stride=2))
    least = perceptual.SMALLEST_SIDE["lpips"]
    assert stem(zeros[least]).shape[-1] == 1
    with pytest.raises(RuntimeError):
        stem(zeros[least - 1])
