"""fidelity.png: one scatter per rung, the proxy score against the rung's bits per byte (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARKERS = {"aggregate": ("*", "tab:red", 160), "best_single": ("D", "tab:orange", 60),
           "baseline": ("s", "black", 60)}  # other roles: small grey dots
CROWDED = 0.07  # a plain point is labelled only if no labelled point lies this close (in axes fractions)


def labelled(points: list[tuple[str, float, float, bool]]) -> set[str]:
    """Which of (pattern, x, y, marked) points get a label: every marked one, then plain ones in order of
    x (best proxy first) where no labelled point is within CROWDED of it once both axes span 0..1."""
    if not points:
        return set()
    span = [max(v) - min(v) or 1.0 for v in zip(*[(x, y) for _, x, y, _ in points])]
    at = {p: (x / span[0], y / span[1]) for p, x, y, _ in points}
    chosen = [p for p, _, _, marked in points if marked]
    for p, _, _, _ in sorted((q for q in points if not q[3]), key=lambda q: -q[1]):
        if all(abs(at[p][0] - at[c][0]) > CROWDED or abs(at[p][1] - at[c][1]) > CROWDED / 2 for c in chosen):
            chosen.append(p)
    return set(chosen)


def scatter(out: Mapping[str, Any], path: Path) -> Path:
    """x: proxy score (higher is better); y: the rung's bits per byte, mean of seeds with each seed as a
    tick (lower is better, drawn downwards); the winner and the baselines marked and labelled, other points
    labelled where there is room."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = out["rungs"]
    fig, axes = plt.subplots(1, len(rungs), figsize=(5.5 * len(rungs), 4.5), squeeze=False)
    for ax, rung in zip(axes[0], rungs):
        name = rung["name"]
        xs = [p["proxy"] for p in out["patterns"] if p["proxy"] is not None] or [0.0]
        right = min(xs) + 0.6 * (max(xs) - min(xs))  # labels of points beyond it go to their left: none cut off
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
                left = point["proxy"] > right
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
