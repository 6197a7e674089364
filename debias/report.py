"""Turn run results into what a person reads: a table, a markdown report, training-curve plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table; floats are shown with 3 decimals, None as n/a."""
    def fmt(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "n/a" if v is None else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_curves(histories: dict[str, list[dict]], metrics: list[str], path: str | Path) -> None:
    """One panel per metric, one line per run, x = epoch."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for name, history in histories.items():
            points = [(m["epoch"] + 1, m[metric]) for m in history if metric in m]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: list[dict], group_key: str, series: list[str], path: str | Path, ylabel: str = "top-1") -> None:
    """Grouped bars: one group per series (e.g. a target task), one bar per row (e.g. a pretraining)."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(series) + 1.5), 3.4))
    width = 0.8 / max(len(rows), 1)
    for i, row in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(series))]
        values = [row.get(s) if row.get(s) is not None else 0.0 for s in series]
        bars = ax.bar(xs, values, width, label=str(row[group_key]))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(series)), series)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(rows: list[dict], metric: str, best_trial: str, path: str | Path) -> None:
    """The sweep at a glance: each trial that reported `metric` at (lambda_scene, lambda_mask), coloured
    and labelled by its final value; a small marker and "(stopped)" for a trial ASHA stopped early, a
    ring around the best."""
    scored = [r for r in rows if r.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    if scored:
        points = ax.scatter([r["lambda_scene"] for r in scored], [r["lambda_mask"] for r in scored],
                            c=[r[metric] for r in scored], s=[60 if r["stopped_early"] else 260 for r in scored],
                            marker="s", cmap="viridis")
        fig.colorbar(points, ax=ax, label=metric)
        for r in scored:
            ax.annotate(f"{r[metric]:.3f}" + (" (stopped)" if r["stopped_early"] else ""),
                        (r["lambda_scene"], r["lambda_mask"]), textcoords="offset points", xytext=(0, 11),
                        ha="center", fontsize=7)
            if r["trial"] == best_trial:
                ax.scatter([r["lambda_scene"]], [r["lambda_mask"]], s=520, facecolors="none", edgecolors="red")
    ax.set_xlabel("lambda_scene")
    ax.set_ylabel("lambda_mask")
    ax.margins(0.25)
    ax.set_title(f"sweep: final {metric} per trial (red ring: best)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
