"""The verdict's sentences from hand-made numbers: best, tied, cheapest, cost relative to the cheapest."""

from __future__ import annotations

from lorabench.workflows.verdict import Standing, best_index, decide, pareto_front

TFIDF = Standing("tfidf", f1=0.7875, tied_with_best=True, texts_per_s=5000.0)
MINILM = Standing("minilm", f1=0.7988, tied_with_best=True, texts_per_s=200.0)
SMOLLM2 = Standing("smollm2", f1=0.3586, tied_with_best=False, texts_per_s=20.0)


def test_the_cheapest_model_tied_with_the_best_is_named_and_the_others_priced_against_it():
    verdict = decide([TFIDF, MINILM, SMOLLM2])
    assert (verdict.best, verdict.tied, verdict.cheapest) == ("minilm", ["tfidf"], "tfidf")
    assert verdict.pareto == ["tfidf", "minilm"]
    assert verdict.sentences == [
        "Best by validation F1: minilm (0.7988).",
        "Not significantly worse (paired bootstrap, 95%): tfidf.",
        "Cheapest of these: tfidf (5,000 texts/s).",
        "Unbeaten on both val F1 and prediction speed: tfidf, minilm.",
        "tfidf: the cheapest model not significantly worse than the best, 5,000 texts/s; val F1 0.7875.",
        "minilm: 25x slower to predict than tfidf, not significantly more accurate (val F1 0.7988 vs 0.7875).",
        "smollm2: 250x slower to predict than tfidf, and significantly less accurate than minilm "
        "(val F1 0.3586 vs 0.7988).",
    ]


def test_a_best_model_without_equals_is_its_own_reference():
    alone = Standing("minilm", f1=0.80, tied_with_best=True, texts_per_s=200.0)
    faster = Standing("tfidf", f1=0.70, tied_with_best=False, texts_per_s=5000.0)
    slower_tied = Standing("big", f1=0.79, tied_with_best=True, texts_per_s=50.0)
    verdict = decide([faster, alone])
    assert (verdict.best, verdict.tied, verdict.cheapest) == ("minilm", [], "minilm")
    assert verdict.sentences[1] == "Every other model is significantly worse (paired bootstrap, 95%)."
    assert verdict.sentences[-2:] == [
        "tfidf: 25x faster to predict than minilm, and significantly less accurate than minilm "
        "(val F1 0.7000 vs 0.8000).",
        "minilm: the best model, 200 texts/s; val F1 0.8000.",
    ]
    with_tied = decide([alone, slower_tied])
    assert with_tied.cheapest == "minilm"
    assert with_tied.sentences[-1] == (
        "big: 4.0x slower to predict than minilm, and not significantly less accurate (val F1 0.7900 vs 0.8000)."
    )


def test_missing_costs_and_rows_that_were_not_compared_are_said_so():
    unmeasured = Standing("a", f1=0.9, tied_with_best=True, texts_per_s=None)
    other_rows = Standing("b", f1=0.5, tied_with_best=None, texts_per_s=100.0)
    verdict = decide([unmeasured, other_rows])
    assert verdict.cheapest is None and verdict.tied == []
    assert verdict.sentences == [
        "Best by validation F1: a (0.9000).",
        "a: inference cost not measured; val F1 0.9000.",
        "b: 100 texts/s; val F1 0.5000.",
    ]
    assert decide([]).sentences == ["No model finished training."]


def test_relative_speed_near_one_and_two_tied_models_that_are_not_the_best():
    best = Standing("best", f1=0.80, tied_with_best=True, texts_per_s=10.0)
    cheap = Standing("cheap", f1=0.78, tied_with_best=True, texts_per_s=1000.0)
    similar = Standing("similar", f1=0.79, tied_with_best=True, texts_per_s=950.0)
    sentences = decide([best, cheap, similar]).sentences
    assert sentences[-1] == (
        "similar: about as fast to predict as cheap; like cheap, not significantly worse than best "
        "(val F1 0.7900 vs 0.8000)."
    )


def test_each_sentence_quotes_the_figures_of_the_model_it_names():
    # the reported case: smollm2 tied with the best (minilm) and priced against the cheapest (tfidf)
    tfidf = Standing("tfidf", f1=0.7885, tied_with_best=True, texts_per_s=5960.0)
    minilm = Standing("minilm", f1=0.7950, tied_with_best=True, texts_per_s=300.0)
    smollm2 = Standing("smollm2", f1=0.7722, tied_with_best=True, texts_per_s=20.0)
    sentences = decide([tfidf, minilm, smollm2]).sentences
    assert sentences[-1] == (
        "smollm2: 298x slower to predict than tfidf; like tfidf, not significantly worse than minilm "
        "(val F1 0.7722 vs 0.7950)."
    )
    assert sentences[-2] == (
        "minilm: 20x slower to predict than tfidf, not significantly more accurate (val F1 0.7950 vs 0.7885)."
    )


def test_more_than_two_classes_name_the_macro_average():
    sentences = decide([TFIDF, MINILM], metric="macro-F1").sentences
    assert sentences[0] == "Best by validation macro-F1: minilm (0.7988)."
    assert sentences[-1] == (
        "minilm: 25x slower to predict than tfidf, not significantly more accurate (val macro-F1 0.7988 vs 0.7875)."
    )


def test_best_index_takes_the_first_of_equals_and_pareto_front_keeps_the_unbeaten():
    assert best_index([0.7, 0.8, 0.8]) == 1
    points = [(0.80, 10.0), (0.78, 1000.0), (0.78, 500.0), (0.70, 1000.0), (0.80, 10.0)]
    # (0.78, 500) loses to (0.78, 1000) on speed; (0.70, 1000) to it on F1; equal points do not beat each other
    assert pareto_front(points) == [0, 1, 4]
