"""Per-class accuracy from confusion matrices: the table per class, each class's drop from the
in-distribution split to the others, and the confusion heatmap a run writes per eval split."""

from __future__ import annotations

import io

from debias import storage


def per_class(confusion: list[list[int]], classes: list[str]) -> list[dict]:
    """Per class: videos (the confusion row's sum) and accuracy (its diagonal share; None without videos).
    `confusion`: (A, A) counts, row = true class, column = predicted."""
    rows = []
    for i, name in enumerate(classes):
        n = sum(confusion[i])
        rows.append({"class": name, "videos": n, "acc": confusion[i][i] / n if n else None})
    return rows


def class_drops(confusions: dict[str, list[list[int]]], classes: list[str], in_split: str) -> list[dict]:
    """One row per class: accuracy on every eval split, and `drop_SPLIT` = in-distribution accuracy minus
    that split's, for each other split (out-of-context: a large drop means the class leaned on its scene).
    Sorted by the first drop, largest first."""
    accs = {split: per_class(m, classes) for split, m in confusions.items()}
    others = [s for s in confusions if s != in_split]
    rows = []
    for i, name in enumerate(classes):
        row: dict = {"class": name, **{f"{s}_acc": accs[s][i]["acc"] for s in confusions}}
        for s in others:
            a, b = row.get(f"{in_split}_acc"), row[f"{s}_acc"]
            row[f"drop_{s}"] = a - b if a is not None and b is not None else None
        rows.append(row)
    if others:
        rows.sort(key=lambda r: -r[f"drop_{others[0]}"] if r[f"drop_{others[0]}"] is not None else float("inf"))
    return rows


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str, title: str) -> None:
    """A row-normalised confusion-matrix heatmap (row = true class), counts written in the cells, as PNG."""
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=float)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(3.5, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(classes) <= 30:
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, int(n), ha="center", va="center", fontsize=6, color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())
