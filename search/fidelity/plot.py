"""fidelity.png: one scatter per rung, the proxy score against the rung's bits per byte (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARKERS = {"aggregate": ("*", "tab:red", 160), "best_single": ("D", "tab:orange", 60),
           "baseline": ("s", "black", 60)}  # other roles: small grey dots
CROWDED = 0.07  # a plain point is labelled only if no labelled point lies this close (in axes fractions)
CHAR, HEIGHT, GAP = 0.0125, 0.045, 0.012  # a label's width per character, its height, its offset (axes fractions)


def labelled(points: list[tuple[str, float, float, bool]]) -> dict[str, str]:
    """Which of (pattern, x, y, marked) points get a label, and on which side of the point ("left" or
    "right"), with the axes spanning 0..1 inside matplotlib's 5% margins and y drawn downwards (lower is
    better, up). Every marked point gets one, on the side where its label leaves the axes least and overlaps
    the fewest labels placed so far; then plain points, best proxy first, where no labelled point lies within
    CROWDED and a side is free: inside the axes, over no other label and no other point."""
    if not points:
        return {}
    xs, ys = [x for _, x, _, _ in points], [y for _, _, y, _ in points]
    sx, sy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    at = {p: (0.05 + 0.9 * (x - min(xs)) / sx, 0.05 + 0.9 * (max(ys) - y) / sy) for p, x, y, _ in points}

    def box(p: str, side: str) -> tuple[float, float, float, float]:
        x, y = at[p]
        w = CHAR * len(p)
        return (x + GAP, y + GAP / 2, x + GAP + w, y + GAP / 2 + HEIGHT) if side == "right" else \
               (x - GAP - w, y + GAP / 2, x - GAP, y + GAP / 2 + HEIGHT)

    def hits(b: tuple[float, float, float, float], c: tuple[float, float, float, float]) -> bool:
        return b[0] < c[2] and c[0] < b[2] and b[1] < c[3] and c[1] < b[3]

    placed: dict[str, str] = {}

    def cost(p: str, side: str) -> tuple[int, int]:
        b = box(p, side)
        outside = int(b[0] < 0 or b[2] > 1 or b[3] > 1)
        over = sum(hits(b, box(q, s)) for q, s in placed.items())
        over += sum(b[0] <= at[q][0] <= b[2] and b[1] <= at[q][1] <= b[3] for q in at if q != p)
        return outside, over

    for p, _, _, _ in (q for q in points if q[3]):
        placed[p] = min(("right", "left"), key=lambda side: cost(p, side))
    for p, _, _, _ in sorted((q for q in points if not q[3]), key=lambda q: -q[1]):
        if any(abs(at[p][0] - at[c][0]) <= CROWDED and abs(at[p][1] - at[c][1]) <= CROWDED / 2 for c in placed):
            continue
        free = [side for side in ("right", "left") if cost(p, side) == (0, 0)]
        if free:
            placed[p] = free[0]
    return placed


def scatter(out: Mapping[str, Any], path: Path) -> Path:
    """x: proxy score (higher is better); y: the rung's bits per byte, mean of seeds with each seed as a
    tick (lower is better, drawn downwards); the winner and the baselines marked and labelled, other points
    labelled where there is room (`labelled`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = out["rungs"]
    fig, axes = plt.subplots(1, len(rungs), figsize=(5.5 * len(rungs), 4.5), squeeze=False)
    for ax, rung in zip(axes[0], rungs):
        name = rung["name"]
        drawn = [p for p in out["patterns"] if p["proxy"] is not None and p["rungs"].get(name, {}).get("mean") is not None]
        named = labelled([(p["pattern"], p["proxy"], p["rungs"][name]["mean"], any(r in MARKERS for r in p["roles"]))
                          for p in drawn])
        for point in drawn:
            at = point["rungs"][name]
            role = next((r for r in point["roles"] if r in MARKERS), None)
            marker, color, size = MARKERS.get(role, ("o", "tab:grey", 24))
            seeds = list(at["bits_per_byte"].values())
            ax.vlines(point["proxy"], min(seeds), max(seeds), color=color, alpha=0.5, linewidth=1)
            ax.scatter([point["proxy"]], [at["mean"]], marker=marker, color=color, s=size, zorder=3)
            if point["pattern"] in named:
                left = named[point["pattern"]] == "left"
                ax.annotate(point["pattern"], (point["proxy"], at["mean"]), fontsize=7 if role else 6,
                            xytext=(-4 if left else 4, 4), ha="right" if left else "left",
                            textcoords="offset points", color="black" if role else "dimgrey")
        corr = next((c for c in out["correlations"] if c["x"] == "proxy" and c["y"] == name), None)
        rho = corr and corr["spearman"]["value"]
        ax.set_title(f"{name}: {rung['target_non_embedding_params'] / 1e6:.2f}M params, {rung['tokens'] / 1e6:.1f}M tokens"
                     + (f"\nSpearman {rho:+.2f}" if rho is not None else "")
                     + (f" (PARTIAL: {out['unfinished_runs']} runs missing)" if out.get("unfinished_runs") else ""),
                     fontsize=9)
        ax.set_xlabel(f"proxy score ({out['proxy']['evaluator']}, higher is better)")
        ax.set_ylabel("validation bits per byte (lower is better)")
        ax.invert_yaxis()  # better is up and right on both axes
        for role, (marker, color, size) in MARKERS.items():
            ax.scatter([], [], marker=marker, color=color, s=size / 2, label=role.replace("_", " "))
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
