"""The PNG: latency (p50 and p99) versus achieved load, one line per target, from the rate sweep.

matplotlib is optional (``pip install 'tollway[bench]'``); without it the
plot is skipped with a message saying so, and everything else still works.
"""

from __future__ import annotations

from pathlib import Path


def plot(data: dict, path: Path) -> str:
    """Write the plot to ``path``; return a line saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'tollway[bench]' or pip install matplotlib)"
    sweep: dict[str, list[tuple[float, float, float, float]]] = {}
    for label, by_target in data["results"].items():
        if data["labels"].get(label) != "rate":
            continue
        for name, res in by_target.items():
            lat = res.get("latency_ms") or {}
            if res.get("ok"):
                sweep.setdefault(name, []).append((res.get("offered_rps", 0.0), res.get("rps", 0.0),
                                                   lat.get("p50"), lat.get("p99")))
    if not sweep:
        return "plot skipped: no rate sweep in this run"
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for i, (name, points) in enumerate(sorted(sweep.items())):
        points.sort()
        color = f"C{i}"
        ax.plot([p[0] for p in points], [p[2] for p in points], "o-", color=color, label=f"{name} p50")
        ax.plot([p[0] for p in points], [p[3] for p in points], "x--", color=color, alpha=0.6, label=f"{name} p99")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("latency (ms, log scale)")
    meta = data.get("meta", {})
    ax.set_title(f"tollway latency vs load ({meta.get('machine', {}).get('cpus', '?')} CPUs, "
                 f"{meta.get('started', '')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"plot: {path}"
