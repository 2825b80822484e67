"""Layer 4, evaluation: how good a VAE is (PSNR, SSIM, LPIPS, rFID), how close to a teacher, how fast, how its
latents are spread (``calibrate``), and the pictures that show it. Shared by training and ``sd-custom-vae eval``."""
