"""fidelity.png: one scatter per rung, the proxy score against the rung's bits per byte (matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

MARKERS = {"aggregate": ("*", "tab:red", 160), "best_single": ("D", "tab:orange", 60),
           "baseline": ("s", "black", 60)}  # other roles: small grey dots
LABEL_ALL = 24  # up to this many patterns every point is labelled; beyond, only the marked roles


def scatter(out: Mapping[str, Any], path: Path) -> Path:
    """x: proxy score (higher is better); y: the rung's bits per byte, mean of seeds with each seed as a
    tick (lower is better, drawn downwards); the winner and the baselines marked and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = out["rungs"]
    fig, axes = plt.subplots(1, len(rungs), figsize=(5.5 * len(rungs), 4.5), squeeze=False)
    for ax, rung in zip(axes[0], rungs):
        name = rung["name"]
        xs = [p["proxy"] for p in out["patterns"] if p["proxy"] is not None] or [0.0]
        right = min(xs) + 0.6 * (max(xs) - min(xs))  # labels of points beyond it go to their left: none cut off
        for point in out["patterns"]:
            at = point["rungs"].get(name, {})
            if point["proxy"] is None or at.get("mean") is None:
                continue
            role = next((r for r in point["roles"] if r in MARKERS), None)
            marker, color, size = MARKERS.get(role, ("o", "tab:grey", 24))
            seeds = list(at["bits_per_byte"].values())
            ax.vlines(point["proxy"], min(seeds), max(seeds), color=color, alpha=0.5, linewidth=1)
            ax.scatter([point["proxy"]], [at["mean"]], marker=marker, color=color, s=size, zorder=3)
            if role or len(out["patterns"]) <= LABEL_ALL:
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
