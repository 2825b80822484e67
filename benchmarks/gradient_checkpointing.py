"""Training memory and time with and without gradient checkpointing, on the SD 1.x architecture.

    python benchmarks/gradient_checkpointing.py                  # 256², batch 1 and 2
    python benchmarks/gradient_checkpointing.py --sizes 128 256 --batches 1

One training step is the course's: forward with a sampled latent, MSE + KL, backward. Each (mode,
size, batch) runs in a fresh process on identical weights and images: the peak resident memory of
one step (above what the model and optimizer-free setup hold before it) and the median seconds of
--repeats steps after a warm-up. Checkpointing must give the same loss and gradients: the largest
gradient difference from the plain step is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from measure import peak_rss_mb, reset_peak_rss, run_child
from results_file import append_row

SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)


def training_step(vae, images: torch.Tensor) -> torch.Tensor:
    from sd_custom_vae.training.losses import kl_divergence

    reconstruction, mean, logvar = vae(images, generator=torch.Generator().manual_seed(0))
    loss = torch.nn.functional.mse_loss(reconstruction, images) + 1e-6 * kl_divergence(mean, logvar).mean()
    loss.backward()
    return loss.detach()


def child(mode: str, weights: str, size: int, batch: int, repeats: int, grads_out: str) -> None:
    from sd_custom_vae import ScratchVAE

    vae = ScratchVAE(**SD)
    vae.load_state_dict(torch.load(weights, weights_only=True))
    if mode == "checkpointed":
        vae.enable_gradient_checkpointing()
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    baseline = reset_peak_rss()
    loss = training_step(vae, images)
    peak = peak_rss_mb()
    torch.save({name: p.grad for name, p in vae.named_parameters()}, grads_out)
    times = []
    for _ in range(repeats):
        vae.zero_grad(set_to_none=True)
        start = time.perf_counter()
        training_step(vae, images)
        times.append(time.perf_counter() - start)
    print(json.dumps({"mb": peak - baseline, "seconds": statistics.median(times), "loss": loss.item()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, weights, size, batch, repeats, grads_out = args.child
        return child(mode, weights, int(size), int(batch), int(repeats), grads_out)

    from sd_custom_vae import ScratchVAE

    folder = Path(tempfile.mkdtemp(prefix="gc-bench-"))
    torch.manual_seed(0)
    torch.save(ScratchVAE(**SD).state_dict(), folder / "weights.pt")
    print(f"SD 1.x VAE, one training step (MSE + KL, backward), {torch.get_num_threads()} threads\n")
    header = (f"{'size':>6}{'batch':>6}{'plain MB':>10}{'ckpt MB':>9}{'mem ratio':>10}"
              f"{'plain s':>9}{'ckpt s':>8}{'time ratio':>11}{'max |Δgrad|':>13}")
    print(header)
    for size in args.sizes:
        for batch in args.batches:
            result = {}
            for mode in ("plain", "checkpointed"):
                result[mode] = run_child(__file__, "--child", mode, folder / "weights.pt", size, batch, args.repeats,
                                         folder / f"{mode}.pt")
            grads = [torch.load(folder / f"{mode}.pt", weights_only=True) for mode in ("plain", "checkpointed")]
            difference = max((grads[0][k] - grads[1][k]).abs().max().item() for k in grads[0])
            plain, ckpt = result["plain"], result["checkpointed"]
            row = {
                "size": size, "batch": batch, "plain_mb": plain["mb"], "checkpointed_mb": ckpt["mb"],
                "memory_ratio": ckpt["mb"] / plain["mb"], "plain_s": plain["seconds"],
                "checkpointed_s": ckpt["seconds"],
                "time_ratio": ckpt["seconds"] / plain["seconds"], "max_grad_difference": difference,
                "threads": torch.get_num_threads(),
            }
            print(f"{size:>5}²{batch:>6}{row['plain_mb']:>10.0f}{row['checkpointed_mb']:>9.0f}{row['memory_ratio']:>10.2f}"
                  f"{row['plain_s']:>9.1f}{row['checkpointed_s']:>8.1f}{row['time_ratio']:>11.2f}"
                  f"{difference:>13.1e}", flush=True)
            append_row("gradient_checkpointing.json", row)


if __name__ == "__main__":
    main()
