"""Part one of the course, end to end: train a VAE from scratch, look at it, and convert it.

    python examples/train_and_convert.py            # the tiny preset on the built-in photos (~15 min on CPU)
    python examples/train_and_convert.py --steps 200 --data my-photos/

Writes the run folder (reconstruction grids, loss curve, metrics.json, a diffusers model folder),
then the same weights as an LDM single file for A1111/ComfyUI and checks the round trip.
"""

import argparse

import torch

import conversion
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.training import load_config, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="a folder of images; default: the built-in photos")
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--output", default="runs/example")
    args = parser.parse_args(argv)

    overrides = {"data": args.data, "output": args.output}
    if args.steps:
        overrides["steps"] = args.steps
    result = train(load_config("tiny", **overrides))
    print(f"validation PSNR {result.metrics['psnr']:.2f} dB; see {result.output}/reconstructions.png")

    # The model folder is ready for vae=; for A1111/ComfyUI, the same weights under LDM names:
    ldm_file = result.output / "vae-ldm.safetensors"
    print(conversion.convert_checkpoint(result.output / "model", ldm_file, to="ldm"))
    original = CustomAutoencoderKL.from_pretrained(result.output / "model")
    reloaded = CustomAutoencoderKL.from_single_file(ldm_file, scaling_factor=original.config.scaling_factor)
    pairs = zip(original.state_dict().values(), reloaded.state_dict().values(), strict=True)
    same = all(torch.equal(a, b) for a, b in pairs)
    print(f"LDM round trip identical: {same}")


if __name__ == "__main__":
    main()
