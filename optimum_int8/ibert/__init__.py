"""Integer-only inference for BERT, RoBERTa and I-BERT encoders (I-BERT, Kim et al., 2021): ``Int8Config(scheme="ibert")``.

``quantize_model(model, Int8Config(scheme="ibert"), calibration_data=batches)`` converts a loaded model;
``INCModelFor<Task>.from_pretrained`` reloads the saved checkpoint, whose integer stages run on native row-fused
kernels, built once per machine by the first call (``compile_integer_layers(model, enabled=False)`` runs the eager
reference ops instead). docs/ibert.md maps the pieces to the paper.
"""

from .calibration import calibrate, scales_from_ibert
from .modules import IntegerEmbeddings, IntegerEncoder, compile_integer_layers

__all__ = ["IntegerEmbeddings", "IntegerEncoder", "calibrate", "compile_integer_layers", "scales_from_ibert"]
