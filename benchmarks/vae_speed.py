"""Speed and memory of CustomAutoencoderKL against diffusers' AutoencoderKL on the same weights.

    python benchmarks/vae_speed.py                 # 256² and 512², batch 1 and 4
    python benchmarks/vae_speed.py --batches 1     # batch 1 only (a quarter of the time)
    python benchmarks/vae_speed.py --large         # and 1024²
    python benchmarks/vae_speed.py --compile       # also ours under torch.compile (compile time apart)
    python benchmarks/vae_speed.py --tiled 2048    # tiled decode of a 2048² image: memory and seams

Both models get the SD 1.x architecture and identical random weights (nothing is downloaded).
Time: the two models alternate, after a warm-up, and the median of --repeats runs is kept.
Memory: every (model, case) runs in a fresh subprocess that loads the model, resets the kernel's
peak-RSS mark (VmHWM) and runs the case; the table shows the peak minus the resident memory just
before the case, the memory the case itself needed. GFLOP are counted with torch's FlopCounterMode,
and compared with the rate of a 2048×2048 fp32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from measure import peak_rss_mb, reset_peak_rss, run_child

SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512)  # SD 1.x


def build(kind: str, weights: Path | None = None):
    """'ours' or 'diffusers', with the weights saved in `weights` (a folder of ours) when given."""
    from diffusers import AutoencoderKL

    from sd_custom_vae import CustomAutoencoderKL

    if weights is not None:
        ours = CustomAutoencoderKL.from_pretrained(weights)
    else:
        torch.manual_seed(0)
        ours = CustomAutoencoderKL.from_autoencoder_kl(
            AutoencoderKL(**SD, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        )
    model = ours if kind == "ours" else ours.to_autoencoder_kl()
    with torch.no_grad():  # from_pretrained may map the weights file lazily: page it all in before measuring
        sum(p.sum() for p in model.parameters())
    return model.eval()


def inputs(op: str, size: int, batch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if op == "encode":
        return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1
    return torch.randn(batch, 4, size // 8, size // 8, generator=generator)


def run_case(model, op: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(x).latent_dist.mean if op == "encode" else model.decode(x).sample


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def count_gflop(model, op: str, x: torch.Tensor) -> float:
    """FLOP of one call, counted on the meta device: shapes only, no arithmetic, no time."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run_case(copy.deepcopy(model).to("meta"), op, x.to("meta"))
    return counter.get_total_flops() / 1e9


def memory_child(kind: str, weights: str, op: str, size: int, batch: int) -> None:
    """In a fresh process: peak RSS after loading, then after one run of the case (JSON on stdout)."""
    model = build(kind, Path(weights))
    x = inputs(op, size, batch)
    baseline = reset_peak_rss()
    run_case(model, op, x)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_rss_mb()}))


def measure_memory(kind: str, weights: Path, op: str, size: int, batch: int) -> dict:
    return run_child(__file__, "--memory-child", kind, weights, op, size, batch)


def time_pair(ours, theirs, op: str, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds for each model, alternating them so that both see the same machine state.
    The caller has run both once already (the exactness check): that was the warm-up."""
    times = {"ours": [], "diffusers": []}
    for _ in range(repeats):
        for name, model in (("ours", ours), ("diffusers", theirs)):
            start = time.perf_counter()
            run_case(model, op, x)
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["ours"]), statistics.median(times["diffusers"])


def speed_table(args) -> list[dict]:
    ours = build("ours")
    theirs = ours.to_autoencoder_kl().eval()
    folder = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    ours.save_pretrained(folder)  # the memory subprocesses load these same weights
    rate = matmul_gflops()
    print(f"machine: {torch.get_num_threads()} threads, 2048² fp32 matmul {rate:.1f} GFLOP/s\n")
    sizes = [256, 512] + ([1024] if args.large else [])
    compiled = None
    if args.compile:
        compiled = build("ours", folder)
        start = time.perf_counter()
        compiled.encoder = torch.compile(compiled.encoder)
        compiled.decoder = torch.compile(compiled.decoder)
        for op in ("encode", "decode"):
            run_case(compiled, op, inputs(op, sizes[0], 1))
        print(f"torch.compile: {time.perf_counter() - start:.1f} s to compile (first calls)\n")
    rows = []
    for size in sizes:
        for batch in args.batches:
            for op in ("encode", "decode"):
                x = inputs(op, size, batch)
                with torch.no_grad():
                    exact = (run_case(ours, op, x) - run_case(theirs, op, x)).abs().max().item()
                t_ours, t_theirs = time_pair(ours, theirs, op, x, args.repeats)
                gflop = count_gflop(theirs, op, x)
                mem_ours = measure_memory("ours", folder, op, size, batch)
                mem_theirs = measure_memory("diffusers", folder, op, size, batch)
                row = {
                    "op": op, "size": size, "batch": batch, "ours_s": t_ours, "diffusers_s": t_theirs,
                    "time_ratio": t_ours / t_theirs, "gflop": gflop, "ours_gflops": gflop / t_ours,
                    "pct_of_matmul": 100 * gflop / t_ours / rate,
                    "ours_mb": mem_ours["peak_mb"] - mem_ours["baseline_mb"],
                    "diffusers_mb": mem_theirs["peak_mb"] - mem_theirs["baseline_mb"],
                    "max_abs_diff": exact,
                }
                row["memory_ratio"] = row["ours_mb"] / max(row["diffusers_mb"], 1.0)
                if compiled is not None:
                    t_compiled = statistics.median(_timed(compiled, op, x, args.repeats))
                    row["compiled_ratio"] = t_compiled / t_theirs
                rows.append(row)
                print_row(row, header=len(rows) == 1)
    return rows


def _timed(model, op, x, repeats):
    run_case(model, op, x)
    for _ in range(repeats):
        start = time.perf_counter()
        run_case(model, op, x)
        yield time.perf_counter() - start


def print_row(row: dict, header: bool) -> None:
    columns = [
        ("case", f"{row['op']} {row['size']}² ×{row['batch']}", 18), ("ours s", f"{row['ours_s']:.3f}", 8),
        ("diffusers s", f"{row['diffusers_s']:.3f}", 11), ("time ratio", f"{row['time_ratio']:.3f}", 10),
        ("GFLOP", f"{row['gflop']:.0f}", 7), ("GFLOP/s", f"{row['ours_gflops']:.1f}", 8),
        ("% matmul", f"{row['pct_of_matmul']:.0f}%", 8), ("ours MB", f"{row['ours_mb']:.0f}", 8),
        ("diffusers MB", f"{row['diffusers_mb']:.0f}", 12), ("mem ratio", f"{row['memory_ratio']:.2f}", 9),
        ("max |diff|", f"{row['max_abs_diff']:.1e}", 10),
    ]
    if "compiled_ratio" in row:
        columns.append(("compiled ratio", f"{row['compiled_ratio']:.3f}", 14))
    if header:
        print("  ".join(name.rjust(width) for name, _, width in columns))
    print("  ".join(value.rjust(width) for _, value, width in columns), flush=True)


def tiled_child(kind: str, weights: str, size: int, mode: str, out: str) -> None:
    """In a fresh process: decode one `size`² latent (tiled or not); save the image and report peak RSS."""
    model = build(kind, Path(weights))
    if mode == "tiled":
        if kind == "ours":
            model.enable_tiling(tile_size=256)
        else:
            model.enable_tiling()
    z = inputs("decode", size, 1)
    baseline = reset_peak_rss()
    start = time.perf_counter()
    image = run_case(model, "decode", z)
    seconds = time.perf_counter() - start
    torch.save(image, out)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_rss_mb(), "seconds": seconds}))


TILED_WAYS = ("ours-tiled", "diffusers-tiled", "ours-untiled", "diffusers-untiled")


def tiled_report(size: int, ways: list[str]) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="vae-bench-"))
    build("ours").save_pretrained(folder)
    results = {}
    for kind, mode in (way.split("-") for way in ways):
        out = folder / f"{kind}-{mode}.pt"
        results[f"{kind} {mode}"] = run_child(__file__, "--tiled-child", kind, folder, size, mode, out)
        print(f"{kind} {mode}: {results[f'{kind} {mode}']}", flush=True)
    reference = torch.load(folder / "ours-untiled.pt", weights_only=True)
    for name in (name for name in results if name != "ours untiled"):
        image = torch.load(folder / f"{name.replace(' ', '-')}.pt", weights_only=True)
        results[name]["max_abs_error_vs_untiled"] = (image - reference).abs().max().item()
    print(f"\n{size}×{size} decode (latent {size // 8}²), peak RSS of the whole process, model included:")
    print(f"{'':18}{'seconds':>9}{'peak RSS MB':>13}{'max |x - ours untiled|':>24}")
    for name, r in results.items():
        error = r.get("max_abs_error_vs_untiled")
        print(f"{name:18}{r['seconds']:9.1f}{r['peak_mb']:13.0f}{'' if error is None else f'{error:.2e}':>24}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--large", action="store_true", help="also 1024²")
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    parser.add_argument("--tiled", type=int, metavar="SIZE", help="only the tiled-decode report at SIZE² pixels")
    parser.add_argument("--ways", nargs="+", choices=TILED_WAYS, default=list(TILED_WAYS),
                        help="with --tiled: which decodes to run (ours-untiled is the reference; default all four)")
    parser.add_argument("--json", default="benchmarks/results/vae_speed.json", help="where to write the results")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--tiled-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        kind, weights, op, size, batch = args.memory_child
        return memory_child(kind, weights, op, int(size), int(batch))
    if args.tiled_child:
        kind, weights, size, mode, out = args.tiled_child
        return tiled_child(kind, weights, int(size), mode, out)
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if args.tiled:
        results["tiled"] = tiled_report(args.tiled, sorted(set(args.ways) | {"ours-untiled"}, key=TILED_WAYS.index))
    else:
        results["matmul_gflops"] = matmul_gflops()
        results["cases"] = speed_table(args)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**existing, **results}, indent=2) + "\n")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
