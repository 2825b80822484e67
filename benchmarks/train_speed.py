"""Training throughput: images/s and peak memory of training steps, three ways on identical weights and batches.

    python benchmarks/train_speed.py                                  # small and sd, 128² and 256²
    python benchmarks/train_speed.py --archs small --sizes 128 --steps 4
    python benchmarks/train_speed.py --ours "--mixed-precision bf16 --channels-last"   # which tricks `ours` uses

(a) plain: the course's loop: ScratchVAE, Adam, MSE + β·KL, backward, step; no accelerate, no tricks.
(b) diffusers: diffusers' AutoencoderKL with the same weights in that same loop.
(c) ours: `sd-custom-vae train`'s step (Trainer.train_step: accelerate, AdamW, gradient clipping, and the
    throughput settings given with --ours, by default what wins on the machine it runs on).

Every way runs in a fresh process: one warm-up step (and compilation, timed apart), then --steps steps on
the same sequence of batches; images/s is the median step's, memory the peak of the timed steps above what
the process held before them (resident set on a CPU, allocated GPU memory on CUDA, which is used if present).
The loss after the last step shows the three optimise alike.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch
from measure import peak_rss_mb, reset_peak_rss, run_child
from results_file import append_row

ARCHS = {
    "small": dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, latent_channels=4, norm_num_groups=32),
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32),
}
LEARNING_RATE, BETA = 1e-4, 1e-6


def batches(size: int, batch: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.rand(batch, 3, size, size, generator=generator) * 2 - 1 for _ in range(count)]


def plain_step(model, optimizer, images, generator, diffusers: bool) -> float:
    """The course's step: reconstruct a posterior sample, MSE + β·KL (LDM's per-value scaling), backward, Adam."""
    if diffusers:
        posterior = model.encode(images).latent_dist
        reconstruction = model.decode(posterior.sample(generator=generator)).sample
        kl = posterior.kl().mean()
    else:
        reconstruction, mean, logvar = model(images, generator=generator)
        kl = (0.5 * (mean.square() + logvar.exp() - 1 - logvar)).flatten(1).sum(1).mean()
    loss = torch.nn.functional.mse_loss(reconstruction, images) + BETA * kl / images[0].numel()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def child(way: str, arch: str, size: int, batch: int, steps: int, weights: str, ours_flags: str) -> None:
    from sd_custom_vae import CustomAutoencoderKL, ScratchVAE

    device = "cuda" if torch.cuda.is_available() else "cpu"  # ours: accelerate picks the same
    data = batches(size, batch, steps + 1)
    state = torch.load(weights, weights_only=True)
    if way in ("plain", "diffusers"):
        model = ScratchVAE(**ARCHS[arch])
        model.load_state_dict(state)
        if way == "diffusers":
            model = CustomAutoencoderKL.from_scratch_vae(model).to_autoencoder_kl()
        model.to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        generator = torch.Generator(device).manual_seed(0)

        def step(images):
            return plain_step(model, optimizer, images.to(device), generator, way == "diffusers")
    else:
        trainer = ours_trainer(arch, state, batch, size, ours_flags, Path(weights).parent / f"run-{arch}-{size}")
        feed = iter(data)
        trainer.feed = types.SimpleNamespace(batch=lambda step: next(feed))  # the same batches as the plain loops

        def step(images):
            return trainer.train_step()["total"]

    def synchronize():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    step(data[0])  # warm-up (and compilation, for ours with --compile)
    synchronize()
    warmup = time.perf_counter() - start
    baseline = reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    times, loss = [], None
    for images in data[1:]:
        start = time.perf_counter()
        loss = step(images)
        synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
    print(json.dumps({"images_per_s": batch / statistics.median(times), "peak_mb": peak - baseline,
                      "loss": loss, "warmup_s": warmup, "step_s": statistics.median(times), "device": device}))


def ours_trainer(arch: str, state: dict, batch: int, size: int, flags: str, output: Path):
    """Our Trainer, its model given `state`, its batches supplied by the caller."""
    from sd_custom_vae.cli import build_parser
    from sd_custom_vae.cli.train import resolve_config
    from sd_custom_vae.training import Trainer

    args = build_parser().parse_args(["train", *shlex.split(flags)])
    config = resolve_config(args).replace(
        model=dict(ARCHS[arch]), resolution=size, final_resolution=None, eval_resolution=size, batch_size=batch,
        learning_rate=LEARNING_RATE, warmup_steps=0, lr_schedule="constant", grad_clip=0.0, reconstruction="mse",
        beta=BETA, output=str(output),
    )
    trainer = Trainer(config.validate(), progress=False, overwrite=True)
    trainer.accelerator.unwrap_model(trainer.model).load_state_dict(state)
    trainer.model.train()
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--batch", type=int, default=2, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    parser.add_argument("--ours", default="--mixed-precision auto",
                        help="train flags for ours (default: what wins: bf16 where the device runs it natively)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        way, arch, size, batch, steps, weights, flags = args.child
        return child(way, arch, int(size), int(batch), int(steps), weights, flags)

    from sd_custom_vae import ScratchVAE

    folder = Path(tempfile.mkdtemp(prefix="train-speed-"))
    print(f"{torch.get_num_threads()} threads; ours: train {args.ours}; batch {args.batch}, {args.steps} timed steps\n")
    print(f"{'arch':>6}{'size':>6}{'way':>11}{'img/s':>8}{'vs plain':>9}{'peak MB':>9}{'warm-up s':>10}{'loss':>10}")
    for arch in args.archs:
        torch.manual_seed(0)
        weights = folder / f"{arch}.pt"
        torch.save(ScratchVAE(**ARCHS[arch]).state_dict(), weights)
        for size in args.sizes:
            results = {}
            for way in ("plain", "diffusers", "ours"):
                results[way] = run_child(__file__, "--child", way, arch, size, args.batch, args.steps, weights,
                                         args.ours)
                r = results[way]
                ratio = r["images_per_s"] / results["plain"]["images_per_s"]
                print(f"{arch:>6}{size:>5}²{way:>11}{r['images_per_s']:>8.2f}{ratio:>8.2f}×{r['peak_mb']:>9.0f}"
                      f"{r['warmup_s']:>10.1f}{r['loss']:>10.5f}", flush=True)
            append_row("train_speed.json", {"arch": arch, "size": size, "batch": args.batch, "steps": args.steps,
                                            "ours_flags": args.ours, "threads": torch.get_num_threads(), **results})


if __name__ == "__main__":
    main()
