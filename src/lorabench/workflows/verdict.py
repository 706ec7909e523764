"""The comparison's answer in words: which model is best, which are as good, and what each costs next to the
cheapest of those. Pure functions of the numbers (`decide`) or of the results table (`verdict_of`), so the
sentences are tested on hand-made results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class Standing:
    """One trained model's numbers: val F1 (mean over seeds), whether a paired bootstrap finds it not significantly
    worse than the best (None: not compared, its rows differ), its bulk prediction throughput (None when not
    measured), the method it trained with (None: a kind without one, like tfidf) and its training seconds."""

    name: str
    f1: float
    tied_with_best: bool | None
    texts_per_s: float | None
    method: str | None = None
    train_seconds: float | None = None


@dataclass(frozen=True)
class Verdict:
    best: str | None
    tied: list[str] = field(default_factory=list)  # the other models not significantly worse than the best
    cheapest: str | None = None  # the fastest to predict of the best and those tied with it
    pareto: list[str] = field(default_factory=list)  # no other model both scores higher and predicts faster
    sentences: list[str] = field(default_factory=list)


def best_index(f1_scores: Sequence[float]) -> int:
    """The best model's position: the highest F1, the first of equal ones (the comparison's order)."""
    return max(range(len(f1_scores)), key=lambda i: (f1_scores[i], -i))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Positions of the points (quality, speed; higher is better in both) that no other point beats in one
    without losing in the other."""

    def beaten(i: int) -> bool:
        quality, speed = points[i]
        return any(
            q >= quality and s >= speed and (q > quality or s > speed) for j, (q, s) in enumerate(points) if j != i
        )

    return [i for i in range(len(points)) if not beaten(i)]


def decide(standings: Sequence[Standing], metric: str = "F1") -> Verdict:
    """The best model, those tied with it, the cheapest of them, and one sentence of cost per model; `metric`
    names the score ('macro-F1' for more than two classes, where F1 is the mean over classes)."""
    if not standings:
        return Verdict(best=None, sentences=["No model finished training."])
    best = standings[best_index([s.f1 for s in standings])]
    tied = [s for s in standings if s.tied_with_best and s is not best]
    measured = [s for s in (best, *tied) if s.texts_per_s is not None]
    cheapest = max(measured, key=lambda s: s.texts_per_s) if measured else None
    timed = [s for s in standings if s.texts_per_s is not None]
    pareto = [timed[i].name for i in pareto_front([(s.f1, s.texts_per_s) for s in timed])]
    sentences = [f"Best by validation {metric}: {best.name} ({best.f1:.4f})."]
    if tied:
        sentences.append(f"Not significantly worse (paired bootstrap, 95%): {', '.join(s.name for s in tied)}.")
    elif all(s.tied_with_best is False for s in standings if s is not best) and len(standings) > 1:
        sentences.append("Every other model is significantly worse (paired bootstrap, 95%).")
    if cheapest is not None and tied and len({s.method for s in standings if s.method is not None}) > 1:
        sentences.append(  # a grid of models and methods: the cheapest approach (model:method) as good as the best
            f"Cheapest approach not significantly worse than the best ({best.name}, val {metric} {best.f1:.4f}): "
            f"{cheapest.name} ({_speed(cheapest.texts_per_s)} texts/s{_training(cheapest)}, val {metric} "
            f"{cheapest.f1:.4f})."
        )
    elif cheapest is not None and tied:
        sentences.append(f"Cheapest of these: {cheapest.name} ({_speed(cheapest.texts_per_s)} texts/s).")
    if len(pareto) > 1:
        sentences.append(f"Unbeaten on both val {metric} and prediction speed: {', '.join(pareto)}.")
    sentences += [_cost_sentence(s, best, cheapest, metric) for s in standings]
    return Verdict(best.name, [s.name for s in tied], cheapest.name if cheapest else None, pareto, sentences)


def _cost_sentence(model: Standing, best: Standing, cheapest: Standing | None, metric: str) -> str:
    """One model's cost next to the cheapest of the models tied with the best, and its accuracy next to them."""
    scores = f"val {metric} {model.f1:.4f}"
    if model.texts_per_s is None:
        return f"{model.name}: inference cost not measured; {scores}."
    if cheapest is None:
        return f"{model.name}: {_speed(model.texts_per_s)} texts/s; {scores}."
    if model is cheapest:
        role = "the best model" if model is best else "the cheapest model not significantly worse than the best"
        return f"{model.name}: {role}, {_speed(model.texts_per_s)} texts/s; {scores}."
    speed = _relative_speed(model.texts_per_s, cheapest.texts_per_s, cheapest.name)
    versus = f"({scores} vs {cheapest.f1:.4f})"
    if model is best:
        accuracy = f", not significantly more accurate {versus}"
    elif model.tied_with_best is None:
        accuracy = f"; not compared with {best.name}: scored on other rows ({scores})"
    elif not model.tied_with_best:
        accuracy = f", and significantly less accurate than {best.name} ({scores} vs {best.f1:.4f})"
    elif cheapest is best:
        accuracy = f", and not significantly less accurate {versus}"
    else:  # named with the best model, so quoted against the best model's figure
        accuracy = f"; like {cheapest.name}, not significantly worse than {best.name} ({scores} vs {best.f1:.4f})"
    return f"{model.name}: {speed}{accuracy}."


def _relative_speed(texts_per_s: float, reference: float, reference_name: str) -> str:
    ratio = reference / texts_per_s
    if 0.9 <= ratio <= 1.1:
        return f"about as fast to predict as {reference_name}"
    if ratio > 1:
        return f"{_times(ratio)} slower to predict than {reference_name}"
    return f"{_times(1 / ratio)} faster to predict than {reference_name}"


def _times(ratio: float) -> str:
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"


def _training(model: Standing) -> str:
    if model.train_seconds is None:
        return ""
    seconds = model.train_seconds
    return f", trains in {seconds:.1f} s" if seconds < 10 else f", trains in {seconds:,.0f} s"


def _speed(texts_per_s: float) -> str:
    return f"{texts_per_s:,.0f}" if texts_per_s >= 100 else f"{texts_per_s:.1f}"


def f1_name(table: pd.DataFrame) -> str:
    """What the table's F1 is: the positive class's for two classes, the mean over classes (macro) for more."""
    return "macro-F1" if (table["classes"].fillna(2) > 2).any() else "F1"


def verdict_of(table: pd.DataFrame) -> Verdict:
    """The verdict on a results table: its trained models' mean val F1, paired test and throughput."""
    standings = [
        Standing(
            name=row["model"],
            f1=float(row["val_f1_mean"]),
            tied_with_best=None if pd.isna(row["val_tied_with_best"]) else bool(row["val_tied_with_best"]),
            texts_per_s=None if pd.isna(row["predict_texts_per_s"]) else float(row["predict_texts_per_s"]),
            method=None if pd.isna(row["method"]) else str(row["method"]),
            train_seconds=None if pd.isna(row["train_seconds"]) else float(row["train_seconds"]),
        )
        for row in table[table["status"] == "ok"].to_dict("records")
    ]
    return decide(standings, f1_name(table))
