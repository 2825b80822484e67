"""Share a trained VAE: upload a training run to the Hugging Face Hub with a model card.

    hf auth login                      # or: export HF_TOKEN=...
    python examples/push_to_hub.py runs/my-run my-user/my-vae

The repo gets a stock diffusers AutoencoderKL folder (anyone can load it without this package), an
LDM single file for A1111/ComfyUI, the reconstruction grid, and a README with the run's metrics.
"""

import argparse

from diffusers import AutoencoderKL

from sd_custom_vae.cli.push import push_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder written by `sd-custom-vae train` (or a model folder)")
    parser.add_argument("repo_id", help="user-or-org/name")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args(argv)

    result = push_run(args.run, args.repo_id, format="both", private=args.private or None)
    print(result)
    # what a user of the repo does: plain diffusers, nothing of ours needed
    vae = AutoencoderKL.from_pretrained(result.repo_id)
    print(f"loaded back: {type(vae).__name__} with scaling_factor={vae.config.scaling_factor}")


if __name__ == "__main__":
    main()
