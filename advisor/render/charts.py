"""Plotly figure specs for the HTML report, as plain JSON-ready dicts.

The report embeds plotly.js itself and calls `Plotly.newPlot(div, data, layout, config)` with these
specs, so this module never imports plotly's Python package (its import alone costs about a second,
more than the whole analysis of a 216k-event trace may take).

Every chart reads a result table the analyzers produced (see the shared table conventions); nothing
here looks at the trace. Strings that come from a trace (operator and kernel names, file paths) are
HTML-escaped before they go into a spec, because plotly renders a subset of HTML tags (`<a>`, `<b>`,
`<br>`) inside tick labels and hover text.
"""
from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from typing import Optional

# How many operators the ranking charts show; the tables themselves may be longer.
TOP_OPS_SHOWN = 15
# Tick labels longer than this are shortened (kernel names run to hundreds of characters); the hover
# text keeps the full name.
MAX_LABEL_CHARS = 48
# Above this many µs the charts switch their axis to ms so the numbers stay readable.
MS_THRESHOLD_US = 10_000.0

COLORS = {
    "busy": "#2f6fb3",
    "host_wait": "#d9822b",
    "other_gap": "#c9ced6",
    "duration": "#2f6fb3",
    "ops": "#d9822b",
    "host": "#5b7fa6",
    "device": "#3f9b6e",
    "computing": "#2f6fb3",
    "communication": "#8e6ac8",
    "free": "#d9822b",
    "slowest": "#c0392b",
}
FONT = "-apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# Offline page: no "send to cloud" button, no plotly logo link.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "showSendToCloud": False,
                 "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}


def plotly_js_path() -> Path:
    """plotly.min.js shipped inside the installed plotly package, found without importing plotly."""
    spec = importlib.util.find_spec("plotly")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for base in locations:
        candidate = Path(base) / "package_data" / "plotly.min.js"
        if candidate.is_file():
            return candidate
    from ..errors import UserError
    raise UserError("plotly.min.js not found: the report needs the `plotly` package installed (pip install plotly)")


def plotly_js() -> str:
    # `</script` cannot occur in the bundle's code, only in its strings or regexes, where `<\/` means
    # the same; escaping it keeps the inline <script> from being closed early.
    return plotly_js_path().read_text(encoding="utf-8").replace("</script", "<\\/script")


def time_unit(max_us: float) -> tuple:
    """(unit label, divisor from µs) for values up to `max_us`."""
    return ("ms", 1000.0) if max_us >= MS_THRESHOLD_US else ("µs", 1.0)


def _esc(text) -> str:
    return html.escape(str(text), quote=False)


def _short(text: str) -> str:
    text = str(text)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _layout(title: str, **extra) -> dict:
    layout = {
        "title": {"text": _esc(title), "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        "font": {"family": FONT, "size": 12, "color": "#24292f"},
        "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff",
        "margin": {"l": 60, "r": 20, "t": 48, "b": 48},
        "legend": {"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1.0, "xanchor": "right",
                   "traceorder": "normal"},
        "hoverlabel": {"font": {"family": FONT}},
    }
    layout.update(extra)
    return layout


def _axis(title: str, **extra) -> dict:
    axis = {"title": {"text": _esc(title)}, "gridcolor": "#eaeef2", "zeroline": False, "automargin": True}
    axis.update(extra)
    return axis


def _col(df, name) -> list:
    return [float(v) for v in df[name].tolist()]


def step_breakdown(steps) -> Optional[dict]:
    """Per-step time: stacked device busy / host wait / other gap when a device timeline exists,
    else host duration with the operator count per step (the `host_bound.steps` table)."""
    if steps is None or len(steps) == 0:
        return None
    labels = [f"step {int(s)}" for s in steps["step"].tolist()]
    if "busy_us" in steps.columns:
        parts = [("busy_us", "device busy", COLORS["busy"]),
                 ("host_wait_us", "idle: waiting for host launch", COLORS["host_wait"]),
                 ("other_gap_us", "idle: other gaps", COLORS["other_gap"])]
        unit, div = time_unit(max(_col(steps, "duration_us") or [0.0]))
        data = [{
            "type": "bar", "name": name, "x": labels, "y": [v / div for v in _col(steps, col)],
            "marker": {"color": color},
            "hovertemplate": f"%{{x}}<br>{name}: %{{y:,.3f}} {unit}<extra></extra>",
        } for col, name, color in parts if col in steps.columns]
        layout = _layout("Step time breakdown", barmode="stack",
                         xaxis=_axis("profiler step", type="category"),
                         yaxis=_axis(f"time per step ({unit})"))
        return {"id": "chart-steps", "title": "Step time breakdown", "data": data, "layout": layout}
    unit, div = time_unit(max(_col(steps, "duration_us") or [0.0]))
    data = [{
        "type": "bar", "name": "step duration", "x": labels, "y": [v / div for v in _col(steps, "duration_us")],
        "marker": {"color": COLORS["duration"]},
        "hovertemplate": f"%{{x}}<br>duration: %{{y:,.3f}} {unit}<extra></extra>",
    }]
    if "host_ops" in steps.columns:
        data.append({
            "type": "scatter", "mode": "lines+markers", "name": "host operators launched", "x": labels,
            "y": [int(v) for v in steps["host_ops"].tolist()], "yaxis": "y2",
            "marker": {"color": COLORS["ops"], "size": 8}, "line": {"color": COLORS["ops"]},
            "hovertemplate": "%{x}<br>%{y:,} host operators<extra></extra>",
        })
    layout = _layout("Step time (host only: no device timeline in this trace)",
                     xaxis=_axis("profiler step", type="category"),
                     yaxis=_axis(f"step duration ({unit})"),
                     yaxis2=_axis("host operators per step", overlaying="y", side="right", showgrid=False,
                                  rangemode="tozero"))
    layout["margin"]["r"] = 90
    return {"id": "chart-steps", "title": "Step time", "data": data, "layout": layout}


def top_ops(table, kind: str) -> Optional[dict]:
    """Horizontal bars of time per step for the top operators (`op_ranking.host` / `.device`)."""
    if table is None or len(table) == 0:
        return None
    top = table.head(TOP_OPS_SHOWN)
    values_col = "per_step_us" if "per_step_us" in top.columns else "total_us"
    values = _col(top, values_col)
    unit, div = time_unit(max(values or [0.0]))
    names = [str(n) for n in top["name"].tolist()]
    # Largest at the top: plotly draws the first category at the bottom.
    order = list(range(len(names)))[::-1]
    hover = []
    for i in order:
        row = top.iloc[i]
        parts = [f"<b>{_esc(names[i])}</b>",
                 f"{values[i] / div:,.3f} {unit} per step"]
        if "count" in top.columns:
            parts.append(f"{int(row['count']):,} calls")
        if "mean_us" in top.columns:
            parts.append(f"mean {float(row['mean_us']):,.3f} µs per call")
        if "share_of_step" in top.columns and row["share_of_step"] == row["share_of_step"]:
            parts.append(f"{100.0 * float(row['share_of_step']):.1f} % of the average step")
        locs = row["locations"] if "locations" in top.columns else None
        if isinstance(locs, str) and locs:
            parts.append("at " + _esc(_short(locs)))
        hover.append("<br>".join(parts))
    # Category values must stay unique even when shortened labels collide, so the axis is keyed by
    # rank and labelled with the (shortened, escaped) names.
    keys = [f"#{i + 1}" for i in order]
    what = "host operators (self time)" if kind == "host" else "device kernels"
    data = [{
        "type": "bar", "orientation": "h", "name": what,
        "x": [values[i] / div for i in order], "y": keys,
        "marker": {"color": COLORS[kind if kind in COLORS else "host"]},
        "hovertext": hover, "hoverinfo": "text",
    }]
    height = max(260, 28 * len(names) + 110)
    layout = _layout(f"Top {what}", height=height,
                     xaxis=_axis(f"time per step ({unit})"),
                     yaxis=_axis("", type="category", tickmode="array", tickvals=keys,
                                 ticktext=[_esc(_short(names[i])) for i in order]),
                     showlegend=False)
    layout["margin"]["l"] = 20
    return {"id": f"chart-top-{kind}", "title": f"Top {what}", "data": data, "layout": layout}


def timeline(intervals, step_bounds_us: Optional[list] = None) -> Optional[dict]:
    """Gantt-style overview of merged device-busy intervals per stream (`host_bound.timeline`).

    One line trace per stream with a break (None) between intervals: a single SVG path per stream
    stays fast even with the table's 5000 rows, where 5000 bar shapes would not."""
    if intervals is None or len(intervals) == 0:
        return None
    end_max = float(intervals["end_us"].max())
    unit, div = time_unit(end_max)
    data = []
    streams = sorted(set(intervals["stream"].tolist()), key=lambda s: (str(type(s)), s))
    for stream in streams:
        part = intervals[intervals["stream"] == stream]
        xs, ys = [], []
        label = f"stream {_esc(stream)}"
        for s, e in zip(part["start_us"].tolist(), part["end_us"].tolist()):
            xs += [round(s / div, 3), round(e / div, 3), None]
            ys += [label, label, None]
        # A hover template instead of per-point text keeps the JSON small (5000 intervals).
        data.append({"type": "scatter", "mode": "lines", "name": label, "x": xs, "y": ys,
                     "line": {"width": 18, "color": COLORS["busy"]},
                     "hovertemplate": f"{label}<br>%{{x:,.3f}} {unit}<extra></extra>",
                     "connectgaps": False, "showlegend": False})
    shapes = []
    for b in step_bounds_us or []:
        shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": b / div, "x1": b / div,
                       "y0": 0, "y1": 1, "line": {"color": "#8c959f", "width": 1, "dash": "dot"}})
    height = max(260, 60 * len(streams) + 190)
    layout = _layout("Device timeline: busy intervals per stream", height=height, shapes=shapes,
                     xaxis=_axis(f"time since the first step started ({unit})", rangemode="tozero",
                                 rangeslider={"visible": True, "thickness": 0.12}),
                     yaxis=_axis("", type="category"))
    return {"id": "chart-timeline", "title": "Device timeline", "data": data, "layout": layout}


def ranks(table, slowest: Optional[int]) -> Optional[dict]:
    """Per-rank step time split (`ranks.table`): stacked computing / communication / free, with the
    slowest rank labelled and pointed at."""
    if table is None or len(table) == 0:
        return None
    ranks_ = [int(r) for r in table["rank"].tolist()]
    is_slowest = [slowest is not None and r == int(slowest) for r in ranks_]
    labels = [f"rank {r}" + (" (slowest)" if s else "") for r, s in zip(ranks_, is_slowest)]
    parts = [(c, n) for c, n in (("computing_us", "computing"), ("communication_us", "communication"),
                                 ("free_us", "free")) if c in table.columns]
    stacked = [sum(v) for v in zip(*[_col(table, c) for c, _ in parts])] if parts else [0.0] * len(ranks_)
    totals = _col(table, "step_us") if "step_us" in table.columns else stacked
    unit, div = time_unit(max(totals + stacked or [0.0]))
    data = [{"type": "bar", "name": name, "x": labels, "y": [v / div for v in _col(table, col)],
             "marker": {"color": COLORS[name]},
             "hovertemplate": f"%{{x}}<br>{name}: %{{y:,.3f}} {unit} per step<extra></extra>"}
            for col, name in parts]
    if "comm_wait_us" in table.columns:
        data.append({"type": "scatter", "mode": "markers", "name": "communication wait",
                     "x": labels, "y": [v / div for v in _col(table, "comm_wait_us")],
                     "marker": {"symbol": "diamond", "size": 10, "color": "#24292f"},
                     "hovertemplate": f"%{{x}}<br>communication wait: %{{y:,.3f}} {unit} per step<extra></extra>"})
    annotations = [{"x": labels[i], "y": stacked[i] / div, "yanchor": "bottom", "text": "slowest",
                    "showarrow": True, "arrowhead": 2, "arrowcolor": COLORS["slowest"], "ax": 0, "ay": -28,
                    "font": {"color": COLORS["slowest"], "size": 12}}
                   for i, s in enumerate(is_slowest) if s]
    layout = _layout("Per-rank step time", barmode="stack", annotations=annotations,
                     xaxis=_axis("rank", type="category"), yaxis=_axis(f"time per step ({unit})"))
    layout["margin"]["t"] = 70
    return {"id": "chart-ranks", "title": "Per-rank step time", "data": data, "layout": layout}
