"""Training curves from a Trainer's `trainer_state.json` (its `log_history`), drawn as SVG on the server with
pygal: no script and nothing fetched from elsewhere, so the pages work air-gapped. Pages show the SVG through
`<img>`, where an SVG cannot run anything whatever the metric names in it."""

from __future__ import annotations

import math

import pygal
from pygal.style import Style

# A chart per panel: which log_history keys it plots.
PANELS: dict[str, str] = {"loss": "Loss", "learning_rate": "Learning rate", "eval": "Evaluation metrics"}
# Points drawn per metric at most.
MAX_POINTS = 200
# eval_* keys that are timings, not metrics.
_NOT_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")
_STYLE = Style(background="white", plot_background="white", font_family="system-ui, sans-serif",
               colors=("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#57606a"))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def series(log_history: list, panel: str) -> dict[str, list[tuple[float, float]]]:
    """(step, value) points per metric of one panel."""
    found: dict[str, list[tuple[float, float]]] = {}
    for record in log_history:
        if not isinstance(record, dict) or (step := _number(record.get("step"))) is None:
            continue
        for key, raw in record.items():
            value = _number(raw)
            if value is None:
                continue
            if panel == "loss":
                wanted = key in ("loss", "eval_loss")
            elif panel == "learning_rate":
                wanted = key == "learning_rate"
            else:
                wanted = key.startswith("eval_") and key != "eval_loss" and not key.endswith(_NOT_METRICS)
            if wanted:
                found.setdefault(str(key), []).append((step, value))
    return found


def panels_with_data(log_history: list) -> list[str]:
    return [panel for panel in PANELS if series(log_history, panel)]


def logged_steps(log_history: list) -> int:
    """The highest step the log reached (what a page says to show the curve has moved on)."""
    steps = [s for record in log_history if isinstance(record, dict) and (s := _number(record.get("step")))]
    return int(max(steps)) if steps else 0


def thinned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most about MAX_POINTS evenly spaced points, the last always kept: a chart 640 pixels wide shows no
    more, and drawing them all would make a long run's chart slow."""
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    kept = [points[int(index * step)] for index in range(MAX_POINTS)]
    return kept if kept[-1] == points[-1] else [*kept, points[-1]]


def render(log_history: list, panel: str, title: str) -> str:
    """One panel as an SVG document (a 'no data yet' chart when the log has none for it)."""
    chart = pygal.XY(js=[], disable_xml_declaration=False, width=640, height=280, show_dots=False,
                     style=_STYLE, title=title, x_title="step", legend_at_bottom=True, truncate_legend=40,
                     no_data_text="no data yet", logarithmic=False)
    for name, points in series(log_history, panel).items():
        chart.add(name, thinned(points), show_dots=len(points) < 3)
    return chart.render(is_unicode=True)
