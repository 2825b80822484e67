import torch

from sd_custom_vae.data import RGB_TO_YCBCR
from sd_custom_vae.training.losses import kl_divergence, latent_colour_misfit


def test_kl_matches_diffusers_distribution():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    moments = torch.randn(3, 8, 5, 5)
    posterior = DiagonalGaussianDistribution(moments)
    torch.testing.assert_close(kl_divergence(posterior.mean, posterior.logvar), posterior.kl())


def test_latent_colour_misfit_is_zero_for_a_linear_colour_read_out_and_near_three_without_colour():
    colours = torch.rand(4, 3, 4, 4) * 2 - 1  # one per 8x8 block, as distinct as a photo's
    images = torch.nn.functional.interpolate(colours, scale_factor=8) + 0.1 * torch.randn(4, 3, 32, 32)
    blocks = torch.nn.functional.avg_pool2d(images, 8)
    mix = torch.randn(4, 3)  # any 3 colour directions (+ a constant) spread over 4 channels
    carries_colour = torch.einsum("cj,ji,bihw->bchw", mix, RGB_TO_YCBCR, blocks) + 0.5
    assert latent_colour_misfit(carries_colour, images).item() < 0.01
    assert latent_colour_misfit(1000 * carries_colour + 50, images).item() < 0.01  # as latents grow in training
    brightness_only = torch.einsum("i,bihw->bhw", RGB_TO_YCBCR[0], blocks).unsqueeze(1).repeat(1, 4, 1, 1)
    assert 1.3 < latent_colour_misfit(brightness_only, images).item() < 2.1  # Y explained, Cb and Cr hardly
    noise = torch.randn(4, 4, 4, 4, requires_grad=True)
    misfit = latent_colour_misfit(noise, images)
    assert 2.3 < misfit.item() < 3.0  # a linear fit on 64 latent pixels explains a little by chance
    misfit.backward()
    assert noise.grad.abs().sum() > 0  # it trains the encoder
    one_pixel = latent_colour_misfit(torch.randn(1, 4, 1, 1), images[:1, :, :8, :8])  # nothing to fit, nothing owed
    assert one_pixel.item() == 0.0
