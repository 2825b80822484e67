"""Part two of the course: put the VAE you trained into Stable Diffusion and draw "a photo of a dog".

    python examples/generate_with_custom_vae.py --vae runs/my-vae/model

Calibrate the VAE first (`sd-custom-vae calibrate runs/my-vae/model --data IMAGES`): the UNet
expects latents of the spread SD's own VAE gives, and `scaling_factor` is what matches them.
"""

import argparse

import torch
from diffusers import StableDiffusionPipeline

from sd_custom_vae.models.pipeline import inject_vae


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5", help="SD folder or Hub id")
    parser.add_argument("--vae", required=True, help="your trained VAE: a model folder or a checkpoint file")
    parser.add_argument("--prompt", default="a photo of a dog")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="dog.png")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32

    # 1. Stable Diffusion exactly as published, its own VAE included.
    pipe = StableDiffusionPipeline.from_pretrained(args.model, dtype=dtype)
    # 2. Our VAE in place of SD's: checked against the UNet, moved to the same device and dtype.
    pipe = inject_vae(pipe, args.vae).to(device)
    # 3. The UNet denoises in latent space; our decoder turns its latents into pixels.
    generator = torch.Generator(device).manual_seed(args.seed)
    image = pipe(args.prompt, num_inference_steps=args.steps, generator=generator).images[0]
    image.save(args.output)
    print(f"wrote {args.output}")
    return image


if __name__ == "__main__":
    main()
