"""The training log (`train_log.csv`): its one writer, reader and plot, for training and the report.

One row per optimizer step: step, epoch, loss and its terms (blank where the step had no token of the term),
learning rate, useful tokens per second; evaluation steps add the validation ROUGE F1 scores and the score
that selects the checkpoint (`valid_selection`). The reward-tuned variant's steps give the summed reward, each
reward term's mean and the KL to its starting model instead.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .io import ClinsumError, atomic_path

LOG_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "loss_sum",
    "loss_ext",
    "loss_kl",
    "lr",
    "tokens_per_s",
    "valid_rouge1",
    "valid_rouge2",
    "valid_rougeL",
    "valid_selection",
    "reward",
    "reward_rouge",
    "reward_bertscore",
    "reward_faithfulness",
    "reward_degeneration",
    "reward_length",
    "kl",
)
INTEGER_COLUMNS = ("step", "epoch")
PANELS = {
    "loss": lambda column: "loss" in column,
    "validation score": lambda column: "valid" in column,
    "reward": lambda column: column.startswith("reward") or column == "kl",
    "learning rate": lambda column: column == "lr",
}


def write_log(path: str | Path, rows: list[dict]) -> None:
    with atomic_path(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row[key] for key in LOG_COLUMNS})


def read_log(path: str | Path) -> list[dict]:
    """Rows with numbers (None where blank); an unreadable log stops naming the file and the problem."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            if "step" not in (reader.fieldnames or []):
                raise ClinsumError(f"{path}: no 'step' column in the training log (columns: {', '.join(reader.fieldnames or [])})")
            return [{key: _number(key, value, path) for key, value in row.items()} for row in reader]
    except OSError as error:
        raise ClinsumError(f"{path}: cannot read the training log ({error.strerror})") from None


def _number(key: str, value: str | None, path) -> float | int | None:
    if value in ("", None):
        return None
    try:
        return int(value) if key in INTEGER_COLUMNS else float(value)
    except ValueError:
        raise ClinsumError(f"{path}: {key} {value!r} is not a number") from None


def curve_panels(rows: list[dict]) -> dict[str, list[str]]:
    """Which columns go in which panel (losses, validation scores, learning rate); a column with no value
    (loss_kl of a variant without KL) has nothing to draw."""
    columns = [key for key in (rows[0] if rows else {}) if key != "step" and any(row.get(key) is not None for row in rows)]
    panels = {name: [column for column in columns if belongs(column.lower())] for name, belongs in PANELS.items()}
    return {name: chosen for name, chosen in panels.items() if chosen}


def moving_mean(values: list[float], window: int) -> list[float]:
    totals = [0.0]
    for value in values:
        totals.append(totals[-1] + value)
    return [(totals[i + 1] - totals[max(0, i + 1 - window)]) / min(window, i + 1) for i in range(len(values))]


def plot_curves(logs: dict[str, list[dict]], path: str | Path, title: str = "") -> None:
    """One panel per kind of column, one colour per variant, one line style per column; losses of long
    runs as a moving mean over the raw values; the selected checkpoint's step marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for rows in logs.values() for name in curve_panels(rows)))
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(5 * max(1, len(names)), 3.8), squeeze=False)
    if not names:
        axes[0][0].text(0.5, 0.5, "no trained variant" if not logs else "nothing logged yet", ha="center", va="center")
        axes[0][0].set_axis_off()
    styles = ["-", "--", ":", "-."]
    for ax, name in zip(axes[0], names):
        for colour, (variant, rows) in enumerate(logs.items()):
            for number, column in enumerate(curve_panels(rows).get(name, [])):
                points = [(row["step"], row[column]) for row in rows if row.get(column) is not None]
                steps, values = [step for step, _ in points], [value for _, value in points]
                window = max(1, len(values) // 50) if name == "loss" else 1
                style = dict(color=f"C{colour % 10}", linestyle=styles[number % 4])
                if window > 1:
                    ax.plot(steps, values, alpha=0.15, **style)
                label = f"{variant}: {column}" + (f" (moving mean of {window})" if window > 1 else "")
                ax.plot(steps, moving_mean(values, window), marker="." if len(values) < 30 else None, label=label, **style)
            if name == "validation score":
                evaluated = [row for row in rows if row.get("valid_selection") is not None]
                if evaluated:
                    best = max(evaluated, key=lambda row: (row["valid_selection"], -row["step"]))
                    ax.axvline(best["step"], color=f"C{colour % 10}", linestyle=":", alpha=0.6)
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)
