"""Old spellings still accepted for a while: one warning, in one wording, that says when they go."""

import warnings

# Every old spelling goes in this release; the warnings say so.
REMOVAL = "0.5"


def deprecated(old: str, new: str, removal: str = REMOVAL, stacklevel: int = 3) -> None:
    """Warn (``FutureWarning``, which Python shows by default) that `old` is now `new` and stops working in
    `removal`; `stacklevel` 3 points at the caller of the function that calls this."""
    warnings.warn(f"{old} is now {new}; the old name stops working in sd-custom-vae {removal}", FutureWarning,
                  stacklevel=stacklevel)
