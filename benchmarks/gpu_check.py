"""What a CUDA machine shows in one go (under 8 minutes on one H100): speed, memory, exact tiling, training.

    bash benchmarks/gpu_check.sh        # runs this, then train_speed.py for the sd preset (bf16, ± checkpointing)

1. encode / decode time and peak GPU memory, ours against diffusers' AutoencoderKL on the same SD 1.x
   weights, at 512² and 1024², in float16 and bfloat16 (batch 1, median of 5 after warm-up);
2. a 4096² decode (512² latent) with our exact tiling and with diffusers' tiling: time, peak memory, and
   diffusers' error against ours (ours equals the untiled decode to float rounding: tests/test_tiling.py);
3. our fp16-fix on the same weights: float16 decode error before and after.
"""

from __future__ import annotations

import statistics
import time

import torch

SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512)


def timed(fn, repeats: int = 5) -> tuple[float, float]:
    """(median seconds, peak GPU memory in GiB above what was allocated before)."""
    fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - before) / 2**30


def main() -> None:
    from diffusers import AutoencoderKL

    from sd_custom_vae import CustomAutoencoderKL

    assert torch.cuda.is_available(), "gpu_check needs a CUDA device"
    torch.manual_seed(0)
    stock = AutoencoderKL(**SD, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    ours = CustomAutoencoderKL.from_autoencoder_kl(stock)
    print(f"device: {torch.cuda.get_device_name()}\n")
    print(f"{'case':>24}{'ours s':>9}{'diffusers s':>12}{'ratio':>7}"
          f"{'ours GiB':>10}{'diffusers GiB':>14}{'max |diff|':>11}")
    with torch.no_grad():
        for dtype in (torch.float16, torch.bfloat16):
            a, b = ours.to("cuda", dtype).eval(), stock.to("cuda", dtype).eval()
            for size in (512, 1024):
                image = torch.rand(1, 3, size, size, device="cuda", dtype=dtype) * 2 - 1
                latents = torch.randn(1, 4, size // 8, size // 8, device="cuda", dtype=dtype)
                for op, x in (("encode", image), ("decode", latents)):
                    run = ((lambda m, x=x: m.encode(x).latent_dist.mean) if op == "encode"
                           else (lambda m, x=x: m.decode(x).sample))
                    # the defaults bind this iteration's run and models, so the closure cannot see a later one
                    t_ours, m_ours = timed(lambda run=run, model=a: run(model))
                    t_theirs, m_theirs = timed(lambda run=run, model=b: run(model))
                    diff = (run(a).float() - run(b).float()).abs().max().item()
                    name = f"{op} {size}² {str(dtype).removeprefix('torch.')}"
                    print(f"{name:>24}{t_ours:9.3f}{t_theirs:12.3f}{t_ours / t_theirs:7.2f}"
                          f"{m_ours:10.2f}{m_theirs:14.2f}{diff:11.1e}", flush=True)

        a, b = ours.to("cuda", torch.float16), stock.to("cuda", torch.float16)
        latents = torch.randn(1, 4, 512, 512, device="cuda", dtype=torch.float16)
        a.enable_tiling(max_memory=8 << 30)
        b.enable_tiling()
        (t_ours, m_ours), (t_theirs, m_theirs) = (timed(lambda: a.decode(latents).sample, 1),
                                                  timed(lambda: b.decode(latents).sample, 1))
        error = (a.decode(latents).sample.float() - b.decode(latents).sample.float()).abs().max().item()
        print(f"\n4096² tiled decode (fp16): ours {t_ours:.1f} s, {m_ours:.2f} GiB; diffusers {t_theirs:.1f} s, "
              f"{m_theirs:.2f} GiB; max |diffusers - ours| = {error:.3f} (diffusers' per-tile GroupNorm)")

    fixed = CustomAutoencoderKL.from_autoencoder_kl(stock.float()).to("cuda")
    print("\nfp16-fix on these weights:\n" + str(fixed.make_fp16_safe()))


if __name__ == "__main__":
    main()
