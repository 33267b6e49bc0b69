"""Legacy INC int8 checkpoints (optimum-intel 1.x + neural-compressor): load them on today's stack, convert them.

``INCModelFor<Task>.from_pretrained`` routes such checkpoints here; ``convert_legacy_checkpoint`` rewrites
one in optimum-int8's safetensors format. See docs/legacy.md.
"""

from .builder import build_legacy_model
from .convert import convert_legacy_checkpoint
from .reader import LegacyCheckpointError, find_legacy_checkpoint, read_legacy_checkpoint


def load_legacy_model(loader_class: type, source, weights_file: str, *model_args, **kwargs):
    """Read the legacy checkpoint at ``source`` and build the model ``loader_class`` stands for."""
    checkpoint = read_legacy_checkpoint(source, weights_file, kwargs)
    return build_legacy_model(checkpoint, loader_class, *model_args, **kwargs)


__all__ = ["LegacyCheckpointError", "convert_legacy_checkpoint", "find_legacy_checkpoint", "load_legacy_model"]
