"""How closely optimum-int8 reproduces the old stack on legacy INC checkpoints that come with reference outputs.

    python examples/legacy_fidelity.py ../shared/fixtures/legacy_inc

For every folder holding a legacy checkpoint and a ``reference.json`` (the old loader's logits and greedy
generations, as in the shared fixtures), loads it with ``INCModelFor<Task>.from_pretrained`` under
today's default attention and under ``attn_implementation="eager"``, then prints the relative and
maximum absolute error of the logits and whether the greedy generations are identical. One torch
thread, as the references were computed. Offline.
"""

import argparse
import json
from pathlib import Path

import torch

from optimum_int8 import INCModelForSeq2SeqLM, INCModelForSequenceClassification

LOADERS = {"seq2seq": INCModelForSeq2SeqLM, "seqcls": INCModelForSequenceClassification}


def compare(folder: Path, loader, **kwargs) -> str:
    reference = json.loads((folder / "reference.json").read_text())
    inputs = {key: torch.tensor(value) for key, value in reference["inputs"].items()}
    expected = torch.tensor(reference["int8_loaded"]["logits"])
    model = loader.from_pretrained(folder, **kwargs)
    with torch.no_grad():
        got = model(**inputs).logits
    relative = ((got - expected).norm() / expected.norm()).item()
    text = "bit-exact" if torch.equal(got, expected) else f"{relative:.1e} rel, {(got - expected).abs().max().item():.1e} abs"
    if "generated_int8_loaded" in reference:
        generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   **reference["generate_kwargs"]).tolist()
        text += ", greedy " + ("identical" if generated == reference["generated_int8_loaded"] else "DIFFERENT")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", type=Path, help="folder of legacy checkpoints, each with a reference.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for folder in sorted(path for path in args.fixtures.iterdir() if (path / "reference.json").is_file()):
        loader = next((cls for key, cls in LOADERS.items() if key in folder.name), None)
        if loader is None:
            print(f"{folder.name}: skipped (no loader for its task in this example)")
            continue
        default = compare(folder, loader)
        eager = compare(folder, loader, attn_implementation="eager")
        print(f"{folder.name}: default attention {default}; eager attention {eager}")


if __name__ == "__main__":
    main()
