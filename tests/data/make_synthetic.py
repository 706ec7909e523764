"""Writes the synthetic labelled text sets the fast test tier uses, beside this script, byte for byte the same on
every run: tests/conftest.py calls `ensure()` before any test, so a clone needs no download and no ../shared, and
no data file is committed.

- `binary/`: tweet-like `id,keyword,location,text,target` rows (target 0/1), as the Kaggle disaster tweets are laid out.
- `four_class/`: news-like `doc_id,headline,body,topic` rows in four topics with the user's own column names; bodies
  are one to three sentences long.
Each class has its own cue words mixed into shared filler, and a tenth of the labels are flipped, so a model
learns something and no model is perfect. test.csv holds the unlabelled rows.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILLER = ["the", "a", "this", "that", "we", "they", "it", "is", "was", "were", "has", "had", "on", "in", "at", "by", "for", "with", "from", "about", "after", "before", "today", "tonight", "people", "city", "road", "report", "update", "news", "local", "new", "old", "big", "small", "still", "just", "very", "more", "less", "again", "near", "over", "under"]  # fmt: skip
CUES = {
    "binary": {
        0: [
            "love",
            "song",
            "game",
            "party",
            "movie",
            "lunch",
            "coffee",
            "weekend",
            "holiday",
            "music",
            "happy",
            "funny",
            "dress",
            "shoes",
        ],
        1: [
            "fire",
            "flood",
            "earthquake",
            "storm",
            "crash",
            "evacuate",
            "injured",
            "emergency",
            "wildfire",
            "collapse",
            "explosion",
            "rescue",
        ],
    },
    "four_class": {
        "sport": [
            "match",
            "goal",
            "league",
            "season",
            "coach",
            "striker",
            "tournament",
            "referee",
            "championship",
            "player",
        ],
        "business": [
            "market",
            "shares",
            "profit",
            "bank",
            "investors",
            "quarterly",
            "merger",
            "economy",
            "prices",
            "company",
        ],
        "tech": ["software", "chip", "phone", "internet", "startup", "data", "network", "computer", "robot", "app"],
        "politics": [
            "election",
            "minister",
            "parliament",
            "vote",
            "party",
            "policy",
            "campaign",
            "government",
            "senate",
            "law",
        ],
    },
}
KEYWORDS = ["", "fire", "storm", "music", "flood", "crash", "party"]


def sentence(rng: random.Random, cues: list[str], words: int) -> str:
    tokens = [rng.choice(cues) if rng.random() < 0.3 else rng.choice(FILLER) for _ in range(words)]
    return " ".join(tokens).capitalize() + "."


def noisy(rng: random.Random, label, labels: list):
    return rng.choice([other for other in labels if other != label]) if rng.random() < 0.1 else label


def write(path: Path, header: list[str], rows: list[list]) -> None:
    """Written to a temporary name and renamed: test workers that start together may all write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def binary(rng: random.Random, train_rows: int = 300, test_rows: int = 40) -> None:
    cues = CUES["binary"]
    rows = []
    for i in range(train_rows + test_rows):
        label = rng.choice([0, 1])
        text = sentence(rng, cues[label], rng.randint(6, 18))
        if rng.random() < 0.2:
            text += f" http://t.co/{rng.randrange(16**6):06x}"
        rows.append([i, rng.choice(KEYWORDS), "", text, noisy(rng, label, [0, 1])])
    header = ["id", "keyword", "location", "text", "target"]
    write(HERE / "binary" / "train.csv", header, rows[:train_rows])
    write(HERE / "binary" / "test.csv", header[:-1], [row[:-1] for row in rows[train_rows:]])


def four_class(rng: random.Random, train_rows: int = 200, test_rows: int = 32) -> None:
    cues = CUES["four_class"]
    topics = list(cues)
    rows = []
    for i in range(train_rows + test_rows):
        topic = rng.choice(topics)
        headline = sentence(rng, cues[topic], rng.randint(4, 8))[:-1]
        body = " ".join(sentence(rng, cues[topic], rng.randint(6, 12)) for _ in range(rng.randint(1, 3)))
        rows.append([f"a{i:04d}", headline, body, noisy(rng, topic, topics)])
    header = ["doc_id", "headline", "body", "topic"]
    write(HERE / "four_class" / "train.csv", header, rows[:train_rows])
    write(HERE / "four_class" / "test.csv", header[:-1], [row[:-1] for row in rows[train_rows:]])


def ensure() -> None:
    """Write both sets unless they are there already."""
    if not all((HERE / name / "train.csv").is_file() for name in ("binary", "four_class")):
        binary(random.Random(0))
        four_class(random.Random(1))


if __name__ == "__main__":
    binary(random.Random(0))
    four_class(random.Random(1))
