"""Does a neural model gain from tweets without their link characters? This writes a copy of a labelled CSV whose
texts have each URL replaced by the word "http" and HTML entities ("&amp;") unescaped, rows and ids unchanged,
so `lorabench train --data COPY` trains on the study's split of the normalised texts.

lorabench normalises URLs only in tfidf (`replace_urls`), where a t.co link's characters were words of their own;
the neural presets read the texts as given, on this evidence (bench/results/mpnet_single_run.json).

    python bench/url_normalised_copy.py ../shared/data/disaster_tweets/train.csv /tmp/normalised/train.csv
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path

import pandas as pd

from lorabench.models.tfidf import URL_PATTERN


def normalised(text: str) -> str:
    return " ".join(URL_PATTERN.sub(" http ", html.unescape(text)).split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--text-column", default="text")
    args = parser.parse_args()
    frame = pd.read_csv(args.source)
    texts = frame[args.text_column].fillna("").astype(str)
    frame[args.text_column] = texts.map(normalised)
    changed = int((frame[args.text_column] != texts).sum())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(
        f"{changed} of {len(frame)} texts changed; {frame[args.text_column].duplicated().sum()} exact duplicates "
        f"after ({texts.duplicated().sum()} before); written to {args.out}"
    )


if __name__ == "__main__":
    main()
