"""The verdict's sentences from hand-made numbers: best, tied, cheapest, cost relative to the cheapest; and the
grid of models × methods (workflows/grid.py) from a hand-made results table."""

from __future__ import annotations

import pandas as pd

from lorabench.workflows.grid import GridCell, build_grid, grid_markdown, member_method
from lorabench.workflows.verdict import Standing, best_index, decide, pareto_front, verdict_of

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


def test_a_grid_of_models_and_methods_names_the_cheapest_approach_and_its_training_time():
    rslora = Standing("minilm:rslora", 0.8003, True, 300.0, method="rslora", train_seconds=195.0)
    probe = Standing("minilm:probe", 0.7690, True, 900.0, method="probe", train_seconds=20.4)
    tfidf = Standing("tfidf", 0.7600, False, 5000.0)
    verdict = decide([tfidf, probe, rslora])
    assert (verdict.best, verdict.tied, verdict.cheapest) == ("minilm:rslora", ["minilm:probe"], "minilm:probe")
    assert verdict.sentences[2] == (
        "Cheapest approach not significantly worse than the best (minilm:rslora, val F1 0.8003): minilm:probe "
        "(900 texts/s, trains in 20 s, val F1 0.7690)."
    )
    quick = Standing("minilm:probe", 0.7690, True, 900.0, method="probe", train_seconds=2.25)
    untimed = Standing("minilm:probe", 0.7690, True, 900.0, method="probe")
    assert "(900 texts/s, trains in 2.2 s, val F1" in decide([quick, rslora]).sentences[2]
    assert "(900 texts/s, val F1" in decide([untimed, rslora]).sentences[2]
    # one method (or none) is no grid: the sentence stays the models' one
    one_method = Standing("mpnet:rslora", 0.79, True, 900.0, method="rslora")
    assert decide([one_method, rslora]).sentences[2] == "Cheapest of these: mpnet:rslora (900 texts/s)."


def _row(model, method, f1=None, low=None, high=None, rank=None, tied=None, status="ok", texts_per_s=100.0):
    return {"model": model, "method": method, "status": status, "val_f1": f1, "val_f1_low": low,
            "val_f1_high": high, "rank": rank, "val_tied_with_best": tied, "val_f1_mean": f1, "classes": 2,
            "predict_texts_per_s": texts_per_s, "train_seconds": 10.0}  # fmt: skip


GRID_TABLE = pd.DataFrame(
    [
        _row("tfidf", None, 0.7600, 0.7400, 0.7800, rank=4, tied=False),
        _row("minilm:probe", "probe", 0.7690, 0.7450, 0.7930, rank=3, tied=True, texts_per_s=900.0),
        _row("minilm:lora", "lora", 0.7949, 0.7710, 0.8180, rank=2, tied=True),
        _row("mpnet:probe", "probe", status="failed", texts_per_s=None),
        _row("mpnet", "lora", 0.8003, 0.7770, 0.8230, rank=1, tied=True),  # its preset's method, not in its name
    ]
)


def test_the_grid_has_a_row_per_model_and_a_column_per_method_with_the_best_and_the_tied_marked():
    grid = build_grid(GRID_TABLE)
    assert grid.methods == ["probe", "lora", "—"]
    assert grid.rows == [
        ("tfidf", [GridCell("", "empty"), GridCell("", "empty"), GridCell("0.7600 [0.7400, 0.7800]", "")]),
        ("minilm", [GridCell("0.7690 [0.7450, 0.7930]", "tied"), GridCell("0.7949 [0.7710, 0.8180]", "tied"),
                    GridCell("", "empty")]),
        ("mpnet", [GridCell("failed", "failed"), GridCell("★ 0.8003 [0.7770, 0.8230]", "best"),
                   GridCell("", "empty")]),
    ]  # fmt: skip
    markdown = grid_markdown(grid, "F1")
    assert "| model | probe | lora | — |" in markdown
    assert "| minilm | 0.7690 [0.7450, 0.7930] (tied) | 0.7949 [0.7710, 0.8180] (tied) |  |" in markdown
    assert "| mpnet | failed | ★ 0.8003 [0.7770, 0.8230] |  |" in markdown
    # the verdict on the same table names the cheapest approach
    assert (
        verdict_of(GRID_TABLE)
        .sentences[2]
        .startswith(
            "Cheapest approach not significantly worse than the best (mpnet, val F1 0.8003): minilm:probe (900 texts/s"
        )
    )


def test_no_grid_without_two_methods_and_a_member_sharing_a_cell_keeps_its_name():
    assert build_grid(GRID_TABLE[GRID_TABLE["method"] != "probe"]) is None
    assert grid_markdown(None, "F1") == ""
    both = pd.concat([GRID_TABLE, pd.DataFrame([_row("mpnet:lora", "lora", 0.79, 0.77, 0.81, rank=5)])])
    assert [model for model, _ in build_grid(both).rows] == ["tfidf", "minilm", "mpnet", "mpnet:lora"]
    # an interrupted comparison's member that has not trained yet is pending, not failed
    waiting = pd.concat([GRID_TABLE, pd.DataFrame([_row("minilm:full", "full", status="pending", texts_per_s=None)])])
    assert build_grid(waiting).rows[1][1][2] == GridCell("pending", "")
    assert member_method("/models/tiny:probe") == ("/models/tiny", "probe")
    assert member_method("C:/models/tiny") == ("C:/models/tiny", None)
    assert member_method("mpnet", "lora") == ("mpnet", "lora")
