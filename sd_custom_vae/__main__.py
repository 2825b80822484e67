"""python -m sd_custom_vae: the same as the sd-custom-vae command (and what accelerate launch -m runs)."""

import sys

from .cli import main

sys.exit(main())
