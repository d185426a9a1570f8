"""What the evidence benchmarks share: mean, standard deviation and a 95% t-interval per condition, as a
CSV, a markdown table and a horizontal bar chart with the intervals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

__all__ = ["interval_table", "markdown", "bar_chart"]


def interval_table(runs: pd.DataFrame, by: str | list[str], value: str, order: Sequence | None = None) -> pd.DataFrame:
    """Per group of ``by``: mean, std (ddof 1), n and the 95% Student-t interval of the mean of ``value``."""
    g = runs.groupby(by, sort=False)[value]
    table = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()})
    if order is not None:
        table = table.reindex(order).dropna(how="all")
    half = stats.t.ppf(0.975, np.maximum(table["n"] - 1, 1)) * table["std"] / np.sqrt(table["n"])
    table["ci95_low"], table["ci95_high"] = table["mean"] - half, table["mean"] + half
    return table


def markdown(table: pd.DataFrame, columns: dict[str, str], index_name: str) -> str:
    """A markdown table: the index as the first column, then ``columns`` (header -> format spec or "" for str)
    where the spec may use any column of the row, e.g. ``"{mean:.4f} ± {std:.4f}"``."""
    lines = ["| " + " | ".join([index_name, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for idx, row in table.iterrows():
        label = " / ".join(map(str, idx)) if isinstance(idx, tuple) else str(idx)
        cells = [spec.format(**row.to_dict()) for spec in columns.values()]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table: pd.DataFrame, path: Path, xlabel: str, title: str, highlight: Sequence[str] = ()) -> Path:
    """Horizontal bars of ``mean`` with the 95% interval; rows whose label contains a ``highlight`` word are
    orange."""
    labels = [" / ".join(map(str, i)) if isinstance(i, tuple) else str(i) for i in table.index]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(table) + 1.2))
    ypos = np.arange(len(table))[::-1]
    err = np.nan_to_num(np.array([table["mean"] - table["ci95_low"], table["ci95_high"] - table["mean"]]))
    colours = ["tab:orange" if any(h in lab for h in highlight) else "tab:blue" for lab in labels]
    ax.barh(ypos, table["mean"], xerr=err, color=colours, capsize=3)
    ax.set_yticks(ypos, labels)
    low = np.nanmin(table["ci95_low"].fillna(table["mean"]).to_numpy()) - 0.02
    high = np.nanmax(table["ci95_high"].fillna(table["mean"]).to_numpy()) + 0.01
    ax.set_xlim(max(0.0, low), min(1.0, high))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
