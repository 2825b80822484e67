"""The batches a run sees: its phases and, in a final phase with two sides, their turns; a resume at any step
continues with exactly the batches the uninterrupted run would have seen."""

import pytest
import torch

from sd_custom_vae.data import load_image_data
from sd_custom_vae.training.batches import BatchFeed, phases
from sd_custom_vae.training.config import TrainConfig

CONFIG = dict(resolution=16, final_resolution=32, final_alternate_resolution=64, final_fraction=0.5, steps=8,
              batch_size=8, eval_resolution=16)


@pytest.fixture(scope="module")
def data(photos):
    return load_image_data(str(photos), 16, val_fraction=0.2, eval_resolution=16)


def test_the_final_phase_takes_turns_between_its_sides_with_as_many_pixels_per_batch():
    config = TrainConfig(**CONFIG).validate()
    assert phases(config) == [(0, [(16, 8)]), (4, [(32, 2), (64, 1)])]
    assert phases(TrainConfig(**dict(CONFIG, final_alternate_resolution=None))) == [(0, [(16, 8)]), (4, [(32, 2)])]


@pytest.mark.parametrize("resume_at", [1, 4, 5, 6, 7])
def test_a_feed_started_at_any_step_continues_the_uninterrupted_one(data, resume_at):
    config = TrainConfig(**CONFIG).validate()
    straight = BatchFeed(config, data, 0, 1, torch.device("cpu"), 0)
    batches = [straight.batch(step) for step in range(config.steps)]
    assert [tuple(b.shape) for b in batches[3:]] == [(8, 3, 16, 16), (2, 3, 32, 32), (1, 3, 64, 64),
                                                   (2, 3, 32, 32), (1, 3, 64, 64)]
    resumed = BatchFeed(config, data, 0, 1, torch.device("cpu"), resume_at)
    for step in range(resume_at, config.steps):
        assert torch.equal(resumed.batch(step), batches[step]), step
        assert resumed.batch_size == len(batches[step])


def test_the_alternate_side_needs_a_final_phase_and_larger_crops():
    from sd_custom_vae.training.presets import load_config

    assert load_config(final_resolution=0).final_alternate_resolution is None  # the preset's final phase, off
    with pytest.raises(ValueError, match="takes turns with --final-resolution"):
        load_config(final_resolution=0, final_alternate_resolution=128)
    with pytest.raises(ValueError, match="takes turns with --final-resolution"):
        TrainConfig(**dict(CONFIG, final_resolution=None)).validate()
    with pytest.raises(ValueError, match="larger than --resolution 16"):
        TrainConfig(**dict(CONFIG, final_alternate_resolution=8)).validate()
