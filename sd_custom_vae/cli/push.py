"""sd-custom-vae push RUN_OR_MODEL_DIR REPO_ID [--private] [--format diffusers|ldm|both] [--token TOKEN]"""

from __future__ import annotations

import argparse

from ..models.hub_repo import FORMATS
from . import add_model_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a trained VAE to the Hugging Face Hub with a model card",
        description="Upload a training run (its model, metrics and reconstruction grid) or a model folder to "
        "the Hub as a stock diffusers AutoencoderKL repo and/or an LDM single file, with a generated model "
        "card. The token comes from --token, HF_TOKEN or `hf auth login`, and is never printed or saved.",
    )
    add_model_argument(parser, "source", "the VAE to push", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("repo_id", metavar="REPO_ID", help="user-or-org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0],
                        help="diffusers folder, LDM single file for A1111/ComfyUI, or both (default diffusers)")
    parser.add_argument("--token", default=None, help="Hub token (prefer HF_TOKEN or `hf auth login`)")
    parser.add_argument("--license", default="apache-2.0", help="license in the model card (default apache-2.0)")
    parser.add_argument("--commit-message", default=None)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..hub import push_run
    from ..models.hub_repo import use_hub_timeouts

    use_hub_timeouts()
    # a failed upload is reported by the command line's one-line handler: staging happens in a temporary
    # folder and a commit is all or nothing, so rerunning is always safe
    result = push_run(
        args.source, args.repo_id, subfolder=args.subfolder, format=args.format, private=args.private or None,
        token=args.token, commit_message=args.commit_message, license=args.license,
    )
    print(result)
    return 0
