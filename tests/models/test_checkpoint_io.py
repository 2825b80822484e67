"""Checkpoint files in every supported format, the convert command, and clear errors on bad input."""

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from factories import TINY, stock_autoencoder_kl
from safetensors.torch import load_file, save_file

import conversion
from conversion import convert_state_dict
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.cli import main
from sd_custom_vae.conversion import formats


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(t, b.state_dict()[k]) for k, t in a.state_dict().items())


def ldm_state_dict(vae):
    return convert_state_dict(vae.state_dict(), "ldm")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_load_with_state_dict_unwrapped(vae, tmp_path, suffix):
    path = tmp_path / f"vae{suffix}"
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in ldm_state_dict(vae).items()}, "epoch": 3}, path)
    assert same_weights(CustomAutoencoderKL.from_single_file(path), vae)


def test_safetensors_in_each_scheme(vae, tmp_path):
    for scheme in ("diffusers", "ldm"):
        save_file(convert_state_dict(vae.state_dict(), scheme), tmp_path / f"{scheme}.safetensors")
        assert same_weights(CustomAutoencoderKL.from_single_file(tmp_path / f"{scheme}.safetensors"), vae), scheme


def test_diffusers_folder_including_fp16_variant(tmp_path):
    stock = stock_autoencoder_kl(TINY)
    stock.save_pretrained(tmp_path / "plain")
    stock.to(torch.float16).save_pretrained(tmp_path / "half", variant="fp16")
    assert (tmp_path / "half" / "diffusion_pytorch_model.fp16.safetensors").exists()
    plain = CustomAutoencoderKL.from_single_file(tmp_path / "plain")
    half = CustomAutoencoderKL.from_single_file(tmp_path / "half")
    assert half.dtype == torch.float16
    assert same_weights(plain.half(), half)


def test_scaling_factor_and_groups_travel_with_our_files(vae, tmp_path):
    vae.register_to_config(scaling_factor=0.4)
    checkpoint = conversion.as_checkpoint(vae.state_dict(), dict(vae.config))
    conversion.save_checkpoint(checkpoint, tmp_path / "ours.safetensors", "diffusers")
    # TINY has 8 groups, which the shapes alone cannot tell: the file's metadata does
    loaded = CustomAutoencoderKL.from_scratch_checkpoint(tmp_path / "ours.safetensors")
    assert loaded.config.scaling_factor == 0.4 and loaded.config.norm_num_groups == 8
    assert same_weights(loaded, vae)


def test_from_scratch_checkpoint_refuses_other_schemes(vae, tmp_path):
    save_file(ldm_state_dict(vae), tmp_path / "ldm.safetensors")
    with pytest.raises(ValueError, match="holds ldm key names"):
        CustomAutoencoderKL.from_scratch_checkpoint(tmp_path / "ldm.safetensors", norm_num_groups=8)


def test_overrides_supply_what_weights_cannot_tell(vae, tmp_path):
    save_file(ldm_state_dict(vae), tmp_path / "ldm.safetensors")
    loaded = CustomAutoencoderKL.from_single_file(
        tmp_path / "ldm.safetensors", config={"norm_num_groups": 8}, scaling_factor=0.13025
    )
    assert loaded.config.scaling_factor == 0.13025 and same_weights(loaded, vae)


# -- the convert command --------------------------------------------------------------------------


def test_convert_command_to_each_target(vae, tmp_path, capsys):
    source = tmp_path / "in.safetensors"
    conversion.save_checkpoint(conversion.as_checkpoint(vae.state_dict(), dict(vae.config)), source, "ldm")
    assert main(["convert", str(source), str(tmp_path / "folder"), "--to", "diffusers"]) == 0
    line = capsys.readouterr().out.strip()
    assert "ldm scheme" in line and f"{len(vae.state_dict())} tensors" in line and "folder" in line
    assert json.loads((tmp_path / "folder" / "config.json").read_text())["_class_name"] == "AutoencoderKL"

    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "half.safetensors"), "--to", "diffusers",
                 "--dtype", "fp16"]) == 0
    half = load_file(tmp_path / "half.safetensors")
    assert all(t.dtype == torch.float16 for t in half.values())
    assert main(["convert", str(tmp_path / "half.safetensors"), str(tmp_path / "bf16.safetensors"), "--to", "ldm",
                 "--dtype", "bf16"]) == 0
    assert load_file(tmp_path / "bf16.safetensors")["decoder.up.0.block.0.norm1.weight"].dtype == torch.bfloat16


# -- bad input: a clear error, and nothing left behind --------------------------------------------


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


def convert_fails(tmp_path, source, output_name, message, capsys):
    before = files_in(tmp_path)
    assert main(["convert", str(source), str(tmp_path / output_name), "--to", "ldm"]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert files_in(tmp_path) == before  # no partial output, no temporary file
    return error


def test_unknown_keys_are_listed(vae, tmp_path, capsys):
    state_dict = dict(vae.state_dict(), **{f"encoder.extra_{i}.weight": torch.zeros(1) for i in range(7)})
    save_file(state_dict, tmp_path / "in.safetensors")
    error = convert_fails(tmp_path, tmp_path / "in.safetensors", "out.safetensors", "7 key(s) are not part of", capsys)
    assert "'encoder.extra_0.weight'" in error and "and 2 more" in error


def test_missing_keys_are_listed(vae, tmp_path, capsys):
    state_dict = ldm_state_dict(vae)
    del state_dict["decoder.mid.attn_1.q.weight"], state_dict["quant_conv.bias"]
    save_file(state_dict, tmp_path / "in.safetensors")
    error = convert_fails(tmp_path, tmp_path / "in.safetensors", "out.safetensors", "2 missing key(s)", capsys)
    assert "decoder.mid.attn_1.q.weight" in error and "quant_conv.bias" in error


def test_shape_mismatch_names_key_and_both_shapes(vae, tmp_path, capsys):
    state_dict = ldm_state_dict(vae)
    state_dict["decoder.up.0.block.1.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    save_file(state_dict, tmp_path / "in.safetensors")
    convert_fails(
        tmp_path, tmp_path / "in.safetensors", "out.safetensors",
        "shape mismatch for 'decoder.up.0.block.1.conv1.weight': the checkpoint has (64, 64, 3, 3), "
        "the architecture read from the other weights needs (32, 32, 3, 3)",
        capsys,
    )


class NotATensor:
    pass


def test_pickle_that_needs_code_is_refused(vae, tmp_path, capsys):
    torch.save({"state_dict": vae.state_dict(), "payload": NotATensor()}, tmp_path / "evil.ckpt")
    convert_fails(tmp_path, tmp_path / "evil.ckpt", "out.safetensors", "needs code beyond plain tensors", capsys)


def test_truncated_and_foreign_files(vae, tmp_path, capsys):
    save_file(ldm_state_dict(vae), tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    convert_fails(tmp_path, tmp_path / "truncated.safetensors", "out.safetensors", "not a readable safetensors file",
                  capsys)
    (tmp_path / "text.safetensors").write_text("hello, I am not a checkpoint")
    convert_fails(tmp_path, tmp_path / "text.safetensors", "out.safetensors", "not a readable safetensors file", capsys)
    (tmp_path / "text.ckpt").write_text("hello")
    convert_fails(tmp_path, tmp_path / "text.ckpt", "out.safetensors", "not a readable PyTorch checkpoint", capsys)
    convert_fails(tmp_path, tmp_path / "absent.safetensors", "out.safetensors", "no such checkpoint", capsys)


def run_unprivileged(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in a forked child that has dropped root (root may write anywhere); return (exit code, stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no exec, so the interpreter and imported modules stay usable
        code = 99
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)  # nobody
            errors = io.StringIO()
            with contextlib.redirect_stderr(errors):
                code = main(argv)
            os.write(write_end, errors.getvalue().encode())
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        return os.waitstatus_to_exitcode(status), pipe.read()


def test_unwritable_output_folder(vae):
    base = Path(tempfile.mkdtemp(prefix="sdvae-perm-"))  # readable by the unprivileged child
    locked = base / "locked"
    try:
        base.chmod(0o755)
        source = base / "in.safetensors"
        save_file(ldm_state_dict(vae), source)
        source.chmod(0o644)
        locked.mkdir(mode=0o555)
        code, error = run_unprivileged(["convert", str(source), str(locked / "out.safetensors"), "--to", "ldm"])
        assert code == 2, error
        assert f"folder {locked} is not writable" in error
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(base)


def test_output_under_a_file_is_refused(vae, tmp_path, capsys):
    save_file(ldm_state_dict(vae), tmp_path / "in.safetensors")
    (tmp_path / "plain_file").write_text("")
    convert_fails(tmp_path, tmp_path / "in.safetensors", "plain_file/out.safetensors", "is not a folder", capsys)


def test_failed_write_keeps_the_previous_file(vae, tmp_path, monkeypatch):
    target = tmp_path / "vae.safetensors"
    target.write_bytes(b"previous good file")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(formats, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        conversion.write_safetensors(vae.state_dict(), target)
    assert target.read_bytes() == b"previous good file"
    assert files_in(tmp_path) == ["vae.safetensors"]
