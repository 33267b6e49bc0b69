"""The one switch for optimum-int8's automatic compiling (I-BERT's native integer kernels, causal LMs' decode step).

``OPTIMUM_INT8_COMPILE=0`` runs everything eagerly without trying to compile; it is read when a compiled path is
about to be taken, so it can be set after import.
"""

import os

COMPILE_ENV = "OPTIMUM_INT8_COMPILE"


def compile_switched_off() -> bool:
    """Whether the user switched automatic compilation off (``OPTIMUM_INT8_COMPILE=0``)."""
    return os.environ.get(COMPILE_ENV, "1") == "0"
