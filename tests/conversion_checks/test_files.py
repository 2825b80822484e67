"""Checkpoint files read and written by ``conversion``: nothing read from outside a model folder, every load
checked, long names and full disks handled, what a file records not overridden."""

import errno
import json

import pytest
import torch
from factories import tiny_vae
from helpers import fails
from safetensors.torch import save_file

import conversion
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.base import files as base_files
from sd_custom_vae.conversion import formats
from sd_custom_vae.models import load_vae


def sharded_folder(tmp_path, shard_name: str):
    folder = tmp_path / "vae"
    tiny_vae().save_pretrained(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    index = {"metadata": {}, "weight_map": {"encoder.conv_in.weight": shard_name}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    weights.unlink()
    return folder


@pytest.mark.parametrize("shard", ["../private.safetensors", "/etc/private.safetensors", "sub/../x.safetensors"])
def test_a_shard_outside_the_model_folder_is_refused(tmp_path, capsys, shard):
    save_file({"secret": torch.ones(1)}, tmp_path / "private.safetensors")
    folder = sharded_folder(tmp_path, shard)
    fails(["convert", str(folder), str(tmp_path / "out.safetensors"), "--to", "ldm"], capsys,
          f"shard {shard!r} is not a file name in the model's folder")
    assert not (tmp_path / "out.safetensors").exists()


def test_what_a_file_records_is_not_overridden(tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "vae")  # records norm_num_groups 8
    convert = ["convert", str(tmp_path / "vae"), str(tmp_path / "out.safetensors"), "--to", "ldm"]
    fails([*convert, "--norm-num-groups", "4"], capsys, "records norm_num_groups=8, not 4")
    fails([*convert, "--norm-num-groups", "0"], capsys, "--norm-num-groups must be at least 1, got 0")


def test_metadata_config_of_the_wrong_json_type_is_named(tmp_path, capsys):
    vae = tiny_vae()
    save_file(vae.state_dict(), tmp_path / "vae.safetensors", metadata={formats.CONFIG_METADATA_KEY: "[1, 2]"})
    fails(["convert", str(tmp_path / "vae.safetensors"), str(tmp_path / "out"), "--to", "diffusers"], capsys,
          "the config in its metadata is a JSON list")


def test_float8_weights_convert_and_load_in_float32(tmp_path):
    vae = tiny_vae()
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in vae.state_dict().items()}, tmp_path / "fp8.safetensors")
    loaded = CustomAutoencoderKL.from_single_file(tmp_path / "fp8.safetensors", norm_num_groups=8)
    assert loaded.dtype == torch.float32
    expected = vae.state_dict()["decoder.conv_out.weight"].to(torch.float8_e4m3fn).float()
    assert torch.equal(loaded.state_dict()["decoder.conv_out.weight"], expected)


@pytest.mark.parametrize("broken", ["nan", "int"])
def test_every_load_refuses_broken_weights(tmp_path, broken):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state_dict = dict(vae.state_dict())
    key = "decoder.conv_out.bias"
    nan = torch.full_like(state_dict[key], float("nan"))
    state_dict[key] = nan if broken == "nan" else torch.zeros(3, dtype=torch.int32)
    save_file(state_dict, weights)
    message = "NaN or infinite" if broken == "nan" else "holds torch.int32 values"
    for load in (CustomAutoencoderKL.from_pretrained, load_vae):
        with pytest.raises(ValueError, match=f"{key}.*{message}|{message}"):
            load(tmp_path / "vae")


def test_a_config_the_weights_cannot_fill_is_refused_before_it_is_built(tmp_path, monkeypatch):
    tiny_vae().save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    (tmp_path / "vae" / "config.json").write_text(json.dumps(dict(config, block_out_channels=[2048, 2048])))
    monkeypatch.setattr(CustomAutoencoderKL, "__init__", lambda *a, **k: pytest.fail("built before checking"))
    with pytest.raises(ValueError, match="describes a VAE of .* parameters but its weights hold"):
        CustomAutoencoderKL.from_pretrained(tmp_path / "vae")


@pytest.mark.parametrize("content", ["[1, 2]", '"a string"'])
def test_a_config_json_that_is_no_object_is_named(tmp_path, content):
    tiny_vae().save_pretrained(tmp_path / "vae")
    (tmp_path / "vae" / "config.json").write_text(content)
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON object"):
        load_vae(tmp_path / "vae")


def test_a_valid_name_of_254_characters_is_written(tmp_path, capsys):
    vae = tiny_vae()
    save_file(vae.state_dict(), tmp_path / "in.safetensors")
    name = "v" * (254 - len(".safetensors")) + ".safetensors"
    out = conversion.convert_checkpoint(tmp_path / "in.safetensors", tmp_path / name, "ldm",
                                        config={"norm_num_groups": 8})
    assert (tmp_path / name).is_file() and out.output.endswith(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.safetensors", name])


def test_a_full_disk_inside_the_safetensors_writer_says_so(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: "
                              "IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")

    save_file(tiny_vae().state_dict(), tmp_path / "in.safetensors")
    monkeypatch.setattr(formats, "save_file", full)
    with pytest.raises(OSError) as error:
        formats.write_safetensors({"x": torch.ones(1)}, tmp_path / "out.safetensors")
    assert error.value.errno == errno.ENOSPC
    fails(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "o.safetensors"), "--to", "ldm",
           "--norm-num-groups", "8"], capsys, "disk full", code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors"]


@pytest.mark.parametrize("kind", ["fifo", "socket", "symlink"])
def test_a_special_file_or_a_link_is_never_replaced_or_written_through(tmp_path, capsys, kind):
    import os
    import socket

    tiny_vae().save_pretrained(tmp_path / "vae")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mine.txt").write_text("the user's file")
    listeners = []
    said = {"fifo": "a named pipe", "socket": "a socket", "symlink": "a symbolic link"}[kind]
    # a file output (--to ldm), and a folder output (--to diffusers, a folder swap)
    for out, to in ((tmp_path / "out.safetensors", "ldm"), (tmp_path / "out", "diffusers")):
        if kind == "fifo":
            os.mkfifo(out)
        elif kind == "socket":
            listeners.append(socket.socket(socket.AF_UNIX))
            listeners[-1].bind(str(out))
        else:
            out.symlink_to(elsewhere / "mine.txt" if to == "ldm" else elsewhere)
        before = os.lstat(out)
        fails(["convert", str(tmp_path / "vae"), str(out), "--to", to, "--overwrite"], capsys, f"{out} is {said}")
        after = os.lstat(out)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert [p.name for p in elsewhere.iterdir()] == ["mine.txt"]
    assert (elsewhere / "mine.txt").read_text() == "the user's file"
    for listener in listeners:
        listener.close()


def test_a_named_pipe_as_input_is_refused_not_read(tmp_path, capsys):
    import os

    os.mkfifo(tmp_path / "in.safetensors")  # reading it would wait forever
    fails(["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "out"), "--to", "diffusers"], capsys,
          "is not a regular file (a named pipe")


def _old_and_new(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    return out


def test_a_folder_swap_is_one_step_where_the_system_can(tmp_path, monkeypatch):
    out = _old_and_new(tmp_path)
    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir(), probe_b.mkdir()
    if not base_files.exchange(probe_a, probe_b):
        pytest.skip("this file system cannot exchange two paths in one step")
    monkeypatch.setattr(base_files.os, "rename", lambda *a: pytest.fail("two renames where one exchange does"))
    with conversion.atomic_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_ctrl_c_between_the_two_renames_of_a_folder_swap_waits_for_the_second(tmp_path, monkeypatch):
    """Where one exchange is not possible: a Ctrl-C after the first rename acts only once the new folder is in place,
    so `out` is never found only inside a hidden `.out.*.old` folder."""
    import os
    import signal

    out = _old_and_new(tmp_path)
    monkeypatch.setattr(base_files, "exchange", lambda a, b: False)
    real_rename = os.rename
    renames = []

    def rename(source, target):
        real_rename(source, target)
        renames.append(target)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, now: between the two renames

    monkeypatch.setattr(base_files.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with conversion.atomic_folder(out, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
    assert len(renames) == 2
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing hidden left behind


def test_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    import os

    out = _old_and_new(tmp_path)
    monkeypatch.setattr(base_files, "exchange", lambda a, b: False)
    real_rename = os.rename
    renames = []

    def rename(source, target):
        renames.append(target)
        if len(renames) == 2:
            raise OSError(errno.EIO, "I/O error")
        real_rename(source, target)

    monkeypatch.setattr(base_files.os, "rename", rename)
    with pytest.raises(OSError, match="I/O error"):
        with conversion.atomic_folder(out, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
