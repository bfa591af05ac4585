"""Model quality across the registered model versions: test HR@10 per method, as rows and as a PNG.

matplotlib is imported when a plot is drawn (never at import), and only its Agg canvas is used, so
drawing is safe in a web server's worker threads and leaves pyplot's global state alone.
"""

from __future__ import annotations

import io
import math
from typing import Any

from recsys_tasks.config import Settings
from recsys_tasks.stores.catalog import Catalog

SERVED = "pinsage_history"
METHODS = (SERVED, "pinsage_latest", "popularity", "itemknn", "transitions")
# status -> (marker, colour, size, label) of the served method's point
STATUS_MARKERS = {
    "active": ("*", "#1b7f3b", 220, "active (serving)"),
    "retired": ("o", "#7b8794", 80, "retired"),
    "rejected": ("X", "#c62828", 120, "rejected by the quality gate"),
    "candidate": ("o", "#1f6feb", 80, "candidate"),
}


def _hr10(metrics: dict[str, Any], method: str) -> float | None:
    entry = metrics.get(method)
    value = entry.get("hr@10") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, int | float) else None


def quality_history(settings: Settings) -> list[dict[str, Any]]:
    """One row per registered version with test metrics, oldest first:
    {"version", "status", "created_at", "hr@10": {method: value or None for METHODS}}."""
    rows = []
    for row in Catalog.from_settings(settings).versions():
        hr = {m: _hr10((row["metrics"] or {}).get("test") or {}, m) for m in METHODS}
        if any(v is not None for v in hr.values()):
            rows.append({"version": row["version"], "status": row["status"], "created_at": row["created_at"],
                         "hr@10": hr})
    return sorted(rows, key=lambda r: (r["created_at"], r["version"]))


def quality_plot_png(settings: Settings) -> bytes:
    """The test HR@10 of every method over the versions (served method bold, status as marker), as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    history = quality_history(settings)
    fig = Figure(figsize=(10, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title("Model quality over versions: test HR@10 per method")
    if not history:
        ax.text(0.5, 0.5, "no model versions yet\n(run the movielens_recsys DAG)", ha="center", va="center",
                fontsize=16, color="#52606d", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        x = list(range(len(history)))
        for method in METHODS:
            y = [math.nan if v is None else v for v in (r["hr@10"][method] for r in history)]
            if method == SERVED:
                ax.plot(x, y, linewidth=3, color="#111827", zorder=3, label=f"{method} (served)")
            else:
                ax.plot(x, y, linewidth=1.3, alpha=0.8, marker=".", zorder=2, label=method)
        for status, (marker, colour, size, _) in STATUS_MARKERS.items():
            points = [(i, r["hr@10"][SERVED]) for i, r in zip(x, history, strict=True)
                      if r["status"] == status and r["hr@10"][SERVED] is not None]
            if points:
                ax.scatter(*zip(*points, strict=True), marker=marker, s=size, color=colour, zorder=4,
                           edgecolors="white", linewidths=0.8)
        crowded = len(history) > 8
        ax.set_xticks(x, [f"{r['version'][:9]}\n{r['created_at']:%Y-%m-%d}" for r in history], fontsize=8,
                      rotation=45 if crowded else 0, ha="right" if crowded else "center")
        ax.set_xlim(-0.5, len(history) - 0.5)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("model version (created, UTC), oldest first")
        ax.set_ylabel("test HR@10")
        ax.grid(axis="y", alpha=0.3)
        methods_legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="method", fontsize=8)
        ax.add_artist(methods_legend)
        ax.legend(handles=[Line2D([], [], linestyle="", marker=marker, markersize=math.sqrt(size),
                                  color=colour, label=label)
                           for marker, colour, size, label in STATUS_MARKERS.values()],
                  loc="lower left", bbox_to_anchor=(1.01, 0), title=f"status ({SERVED} point)", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
