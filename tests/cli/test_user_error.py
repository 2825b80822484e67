"""The command line reports as bad input (one line, exit code 2) only a UserError or a file system error; any
other exception is our bug, and says so, rather than blaming the user's input."""

import pytest

from sd_custom_vae.base.errors import UserError
from sd_custom_vae.cli import describe


def test_a_user_error_and_a_file_system_error_are_bad_input():
    assert describe(UserError("--steps must be at least 1, got 0")) == ("--steps must be at least 1, got 0", 2)
    assert describe(FileNotFoundError(2, "No such file or directory", "photos"))[1] == 2


@pytest.mark.parametrize("error", [ValueError("math domain error"), TypeError("unhashable type: 'list'"),
                                   KeyError("conv_in.weight"), IndexError("list index out of range")])
def test_any_other_error_is_reported_as_a_bug(error):
    line, code = describe(error)
    assert code == 1 and "a bug" in line and "SD_CUSTOM_VAE_TRACEBACK" in line


def test_a_user_error_is_still_a_value_error_for_code_that_catches_those():
    with pytest.raises(ValueError):
        raise UserError("bad")
