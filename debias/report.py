"""Turn run results into what a person reads: a table, a markdown report, training-curve plots."""

from __future__ import annotations

import datetime
import importlib.metadata
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from debias import storage  # noqa: E402


def save_figure(fig: "plt.Figure", path: str) -> None:
    """Write a figure as PNG to a local path or a URI, and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())


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
    save_figure(fig, str(path))


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
    save_figure(fig, str(path))


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
    save_figure(fig, str(path))


def plot_seeds(rows: dict[str, dict], group_key: str, groups: list[str], metrics: list[str], path: str,
               chance: dict[str, float] | None = None) -> None:
    """One panel per metric, one bar per group (e.g. a variant): the mean over its rows (e.g. seeds)
    with +- one standard deviation, and every row's own value as a dot; a dashed line at `chance`."""
    chance = chance or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics) + 0.6, 3.3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, group in enumerate(groups):
            values = [r[metric] for r in rows.values() if r[group_key] == group and r.get(metric) is not None]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(i, statistics.fmean(values), 0.7, yerr=std, capsize=3, color=f"C{i}", alpha=0.55)
            ax.scatter([i] * len(values), values, s=10, color="black", zorder=3)
        if metric in chance:
            ax.axhline(chance[metric], color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def provenance() -> dict[str, object]:
    """Where a result comes from, for its summary.json: date (UTC), commit (HEAD's short hash; and
    worktree_clean: whether the tracked files match it), machine (cores, CPU, memory, GPUs, Python,
    torch, Ray; the load average now, since a loaded machine is slower) and the command line."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                                  cwd=Path(__file__).resolve().parent).stdout.strip()
        except (OSError, subprocess.CalledProcessError):  # not a checkout (an installed wheel)
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine()) \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or platform.machine()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = shutil.which("nvidia-smi") and subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}" for p in ("torch", "ray"))
    machine = (f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {gpus.replace(chr(10), ' + ') if gpus else 'no GPU'}; "
               f"Python {platform.python_version()}, {versions}; load average {os.getloadavg()[0]:.1f}")
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "worktree_clean": commit != "unknown" and not git("status", "--porcelain", "--untracked-files=no"),
            "machine": machine, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
