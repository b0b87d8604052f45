"""The benchmark's outputs: a table on stdout, a CSV and a PNG plot of the ratios."""

from __future__ import annotations

import csv
from dataclasses import dataclass


@dataclass
class Row:
    """One variant at one size; times in seconds, memory in MiB; None where it did not run."""

    variant: str
    size: tuple
    median_s: float | None
    peak_mb: float | None
    floor_s: float | None = None
    floor_mb: float | None = None
    note: str = ""
    interleaved_ratio: float | None = None  # time / floor, alternating in one process

    @property
    def size_text(self) -> str:
        return "x".join(str(v) for v in self.size)

    @property
    def time_ratio(self) -> float | None:
        return _ratio(self.median_s, self.floor_s)

    @property
    def memory_ratio(self) -> float | None:
        return _ratio(self.peak_mb, self.floor_mb)


def _ratio(value, floor):
    return None if value is None or not floor else value / floor


def _fmt(value, pattern):
    return "-" if value is None else pattern.format(value)


def print_table(rows, args) -> None:
    print(f"\ndevice {args.device}, {args.dtype}, forward + backward, median of {args.repeats}")
    print("time floor: x W^T, G W, G^T x; memory floor: torch + embeddings + weights + grads")
    print("same process: time / floor with the two alternating in the variant's process")
    header = f"{'variant':12s} {'N x D x C':>18s} {'time s':>8s} {'peak MiB':>9s}"
    print(header + f" {'time/floor':>10s} {'same proc':>9s} {'mem/floor':>9s}  note")
    for row in rows:
        print(
            f"{row.variant:12s} {row.size_text:>18s} {_fmt(row.median_s, '{:.3f}'):>8s} "
            f"{_fmt(row.peak_mb, '{:.0f}'):>9s} {_fmt(row.time_ratio, '{:.2f}'):>10s} "
            f"{_fmt(row.interleaved_ratio, '{:.2f}'):>9s} "
            f"{_fmt(row.memory_ratio, '{:.2f}'):>9s}  {row.note}"
        )


def write_csv(rows, args, path) -> None:
    fields = ["variant", "n", "d", "c", "device", "dtype", "median_s", "peak_mb", "floor_s"]
    fields += ["floor_mb", "time_ratio", "interleaved_ratio", "memory_ratio", "note"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        for row in rows:
            n, d, c = row.size
            writer.writerow(
                [
                    row.variant,
                    n,
                    d,
                    c,
                    args.device,
                    args.dtype,
                    row.median_s,
                    row.peak_mb,
                    row.floor_s,
                    row.floor_mb,
                    row.time_ratio,
                    row.interleaved_ratio,
                    row.memory_ratio,
                    row.note,
                ]
            )


def write_plot(rows, args, path) -> None:
    """Two panels (time and memory, each / floor), one group of bars per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(dict.fromkeys(row.size_text for row in rows))
    variants = list(dict.fromkeys(row.variant for row in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(variants)
    for ax, key, title in zip(
        axes, ("time_ratio", "memory_ratio"), ("time", "peak memory"), strict=True
    ):
        for k, variant in enumerate(variants):
            values = {r.size_text: getattr(r, key) for r in rows if r.variant == variant}
            xs = [i + k * width for i, s in enumerate(sizes) if values.get(s) is not None]
            ys = [values[s] for s in sizes if values.get(s) is not None]
            ax.bar(xs, ys, width, label=variant)
        ax.axhline(1.0, color="black", linewidth=0.8)
        if key == "time_ratio":
            ax.set_yscale("log")  # the slowest peer is ~30x
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(sizes))], sizes)
        ax.set_ylabel(f"{title} / floor")
        ax.set_title(f"{title} ({args.device}, {args.dtype}, forward + backward)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
