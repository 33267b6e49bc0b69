"""``optimum-int8 convert LEGACY_DIR OUT_DIR``: a legacy INC int8 checkpoint in optimum-int8's format."""

import json

from ..tasks import TASK_AUTO_CLASSES
from .convert import convert_legacy_checkpoint


def add_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="rewrite a legacy INC int8 checkpoint (optimum-intel 1.x) in optimum-int8's safetensors format",
        description="Rewrite a legacy INC int8 checkpoint (pytorch_model.bin with best_configure, from optimum-intel "
        "1.x + neural-compressor) as model.safetensors + config.json with the fallback manifest, generation config "
        "and tokenizer files. The converted model computes bit for bit what the legacy one loaded by optimum-int8 "
        "computes (see docs/legacy.md).",
    )
    parser.add_argument("source", metavar="LEGACY_DIR", help="directory or Hub repo id of the legacy checkpoint")
    parser.add_argument("destination", metavar="OUT_DIR", help="new (or empty) directory to write")
    parser.add_argument("--task", choices=sorted(TASK_AUTO_CLASSES),
                        help="the checkpoint's task; needed only when its config.json names no architecture")
    parser.add_argument("--static-as-dynamic", action="store_true",
                        help="store a static int8 checkpoint's Linear modules as dynamic int8 (same int8 weights, "
                        "activations quantized per call: outputs change slightly) instead of as int8_static modules "
                        "with their calibrated input and output qparams (bit-exact, the default)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit) when LEGACY_DIR is a repo id")
    parser.set_defaults(run=run)


def run(args) -> int:
    kwargs = {"revision": args.revision} if args.revision else {}
    destination = convert_legacy_checkpoint(
        args.source, args.destination, task=args.task, static_as_dynamic=args.static_as_dynamic, **kwargs
    )
    manifest = json.loads((destination / "config.json").read_text())["quantization_config"]["manifest"]
    fallbacks = ", ".join(f"{name} ({dtype})" for name, dtype in manifest["fallback_modules"].items()) or "none"
    static = len(manifest.get("output_qparams_modules", []))
    static_note = f" ({static} static, with calibrated input and output qparams)" if static else ""
    print(f"Converted {args.source} -> {destination}: {len(manifest['int8_modules'])} int8 Linear modules{static_note}; "
          f"kept in float: {fallbacks}")
    return 0
