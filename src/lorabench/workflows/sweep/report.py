"""A sweep's outputs in OUT: trials.csv, best.json (a valid `train --config`), two charts and an HTML page.

The charts are Optuna's own matplotlib plots, drawn from an in-memory study rebuilt from the trial records,
so the ray and wandb backends get the same charts as the optuna one.
"""

from __future__ import annotations

import io
import warnings
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
from jinja2 import Environment
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState, create_trial

from lorabench.core.console import say
from lorabench.core.errors import LorabenchError
from lorabench.core.schemas import TrialRecord
from lorabench.core.storage import write_atomic, write_json
from lorabench.workflows.report import BASE_CSS
from lorabench.workflows.sweep.objective import METRIC, Objective

HISTORY_PNG = "optimization_history.png"
IMPORTANCE_PNG = "param_importances.png"


def _time(stamp: float | None) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="milliseconds") if stamp else ""


def trials_table(records: list[TrialRecord], objective: Objective) -> pd.DataFrame:
    names = list(objective.space.sampled())
    rows = [
        {
            "number": r.number,
            "state": r.state,
            "value": r.value,
            "seconds": r.seconds,
            "started": _time(r.started),
            "finished": _time(r.finished),
            **{key: value for key, value in r.extra.items() if value is not None},
            **{name: r.params.get(name) for name in names},
        }
        for r in sorted(records, key=lambda r: r.number)
    ]
    if not rows:
        return pd.DataFrame(columns=["number", "state", "value", "seconds", "started", "finished", *names])
    return pd.DataFrame(rows).convert_dtypes()  # integer columns with gaps (retry_of) stay integers


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The complete trial with the highest value (pruned trials only ran part of their epochs)."""
    complete = [r for r in records if r.state == "COMPLETE" and r.value is not None]
    return max(complete, key=lambda r: (r.value, -r.number)) if complete else None


def _chart_study(records: list[TrialRecord], objective: Objective):
    study = optuna.create_study(direction="maximize")
    distributions = objective.space.distributions()
    for r in sorted(records, key=lambda r: r.number):  # every trial, so the charts show the real numbers
        finished = r.state in ("COMPLETE", "PRUNED") and r.value is not None
        study.add_trial(
            create_trial(
                params=r.params,
                distributions={k: distributions[k] for k in r.params},
                value=r.value if finished else None,
                state=TrialState[r.state] if finished else TrialState.FAIL,
            )
        )
    return study


def _png(axes) -> bytes:
    import matplotlib.pyplot as plt

    figure = axes.figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def write_charts(out: Path, records: list[TrialRecord], objective: Objective) -> dict[str, str]:
    """Draw the charts that the trials allow; returns {file: why it is missing} for the others."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from optuna.visualization.matplotlib import (
        plot_optimization_history,
        plot_param_importances,
    )

    study = _chart_study(records, objective)
    complete = sum(r.state == "COMPLETE" for r in records)
    missing = {}
    # Optuna's plots switch the process's matplotlib style to ggplot (plt.style.use); rc_context puts it back, so
    # charts drawn later in the same process (a comparison's report) look as they would without a sweep.
    with warnings.catch_warnings(), matplotlib.rc_context():
        # the plots are "experimental"; the importance evaluator warns when every value is the same
        warnings.simplefilter("ignore", ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        write_atomic(out / HISTORY_PNG, _png(plot_optimization_history(study, target_name="validation F1")))
        if complete >= 2:
            write_atomic(out / IMPORTANCE_PNG, _png(plot_param_importances(study)))
        else:
            (out / IMPORTANCE_PNG).unlink(missing_ok=True)
            missing[IMPORTANCE_PNG] = "parameter importance needs at least 2 complete trials"
    return missing


def write(out: Path, records: list[TrialRecord], objective: Objective, backend: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    table = trials_table(records, objective)
    write_atomic(out / "trials.csv", table.to_csv(index=False))
    best = best_trial(records)
    if best is None:
        raise LorabenchError(f"no trial completed; see {out / 'trials.csv'}")
    config = objective.config(best.params)
    best_json = {
        "metric": METRIC,
        "value": best.value,
        "trial": best.number,
        "params": best.params,
        "fixed": objective.space.fixed(),
        "backend": backend,
        # `lorabench train --config best.json` reads this section: the best trial's full run config.
        "config": config.model_dump(mode="json"),
    }
    write_json(out / "best.json", best_json)
    missing = write_charts(out, records, objective)
    write_atomic(out / "index.html", _page(out, table, best_json, missing))
    finished = int(table["state"].isin(["COMPLETE", "PRUNED"]).sum())
    say(
        f"sweep: {finished} trials finished; best trial {best.number}: val F1 {best.value:.4f} {best.params}; "
        f"report {out / 'index.html'}"
    )
    return {
        "backend": backend,
        "finished_trials": finished,
        "best_trial": best.number,
        "best_val_f1": best.value,
        "best_params": best.params,
        "best_json": str(out / "best.json"),
        "report": str(out / "index.html"),
    }


PAGE = (
    """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lorabench sweep {{ name }}</title>
<style>
"""
    + BASE_CSS
    + """tr.best td { background: #eaf7ea; } tr.FAIL td, tr.RUNNING td { color: #8a1f1f; } tr.PRUNED td { color: #555e6e; }
.charts { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.charts img { max-width: 100%; border: 1px solid #e3e7ee; }
</style></head><body>
<h1>lorabench sweep {{ name }}</h1>
<p class="meta">Backend {{ best.backend }}. Objective: each trial's best validation F1, maximised.
Files: <a href="trials.csv">trials.csv</a>, <a href="best.json">best.json</a>; train the best trial again with
<code>lorabench train --config {{ best_path }} --out RUN_DIR</code>.</p>

<h2>Best trial: {{ best.trial }}, validation F1 {{ "%.4f" | format(best.value) }}</h2>
<table><tbody>{% for key, value in parameters.items() %}<tr><th>{{ key }}</th><td>{{ value }}</td></tr>
{% endfor %}</tbody></table>

<h2>Charts</h2>
<div class="charts">{% for file, title in charts %}{% if file in missing %}<p>{{ title }}: {{ missing[file] }}</p>
{% else %}<a href="{{ file }}"><img alt="{{ title }}" src="{{ file }}"></a>{% endif %}{% endfor %}</div>

<h2>Trials</h2>
<table><thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead><tbody>
{% for row, state in rows %}<tr class="{{ state }}">{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
</body></html>
"""
)


def _cell(value) -> str:
    if pd.isna(value):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _page(out: Path, table: pd.DataFrame, best: dict, missing: dict[str, str]) -> str:
    rows = [
        ([_cell(v) for v in row], "best" if row[0] == best["trial"] else row[1])
        for row in table.itertuples(index=False)
    ]
    return (
        Environment(autoescape=True)
        .from_string(PAGE)
        .render(
            name=out.resolve().name,
            best=best,
            best_path=str(out / "best.json"),
            parameters={**best["params"], **best["fixed"]},
            missing=missing,
            headers=list(table.columns),
            rows=rows,
            charts=[(HISTORY_PNG, "Optimisation history"), (IMPORTANCE_PNG, "Parameter importance")],
        )
    )
