"""The speed/quality frontier, drawn from a bench_paired JSON (issue #19 item 5).

    python benchmarks/plot_frontier.py RESULT.json [-o PNG] [--ratio]

One panel per (model, size) row of the JSON: every provider as a labelled point, its time
(median ms; with ``--ratio``, its time / fused_fp32's, the median over rounds) against its
Set5 PSNR loss in dB (reference minus provider; 0 = as exact as the float32 reference, right
= worse). Lower left is better. Providers whose PSNR was not measured are listed under the
panel, not drawn. The PNG goes to benchmarks/results/<json name>-frontier.png unless ``-o``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def paired_rows(data: dict) -> list[dict]:
    """The bench_paired rows (extra_info with ``providers``) of a pytest-benchmark JSON."""
    rows = [b.get("extra_info", {}) for b in data.get("benchmarks", [])]
    return [r for r in rows if isinstance(r.get("providers"), dict) and r["providers"]]


def points(row: dict, ratio: bool) -> tuple[list[tuple[str, float, float]], list[str]]:
    """(label, PSNR loss dB, time) per provider with a PSNR, and the labels without one."""
    drawn, missing = [], []
    for name, rec in row["providers"].items():
        info, q = rec.get("info", {}), rec.get("quality", {})
        label = name
        if info.get("precision") and name.startswith("openvino_default"):
            label += f" ({info['precision']})"  # the precision OpenVINO chose
        if name.startswith("fused") and info.get("backend") == "reference":
            label += " [ran the reference]"
        t = rec.get("fused_speedup") if ratio else rec.get("median_ms")
        if "psnr_change_db" not in q or t is None or not math.isfinite(q["psnr_change_db"]):
            missing.append(label)
            continue
        drawn.append((label, -q["psnr_change_db"], t))
    return drawn, missing


MARKERS = "osD^v<>ph*"


def _style(label: str, styles: dict) -> dict:
    """One colour and marker per provider, the same in every panel (the figure's legend)."""
    name = label.split(" ")[0]
    if name not in styles:
        i = len(styles)
        styles[name] = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "label": name}
    return styles[name]


def _label_offsets(drawn: list[tuple[str, float, float]]) -> list[int]:
    """Vertical label offsets (points) so that labels of coinciding points do not overprint:
    each point near an earlier one (within 3% of both axis spans) moves its label down a line."""
    if not drawn:
        return []
    xs, ys = [d[1] for d in drawn], [d[2] for d in drawn]
    sx, sy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    offsets = []
    for i, (_, x, y) in enumerate(drawn):
        near = sum(abs(x - drawn[j][1]) < 0.03 * sx and abs(y - drawn[j][2]) < 0.03 * sy for j in range(i))
        offsets.append(4 - 9 * near)
    return offsets


def _panel(ax, row: dict, ratio: bool, styles: dict) -> None:
    drawn, missing = points(row, ratio)
    for (label, loss, t), dy in zip(drawn, _label_offsets(drawn)):
        ax.scatter([loss], [t], s=36, zorder=3, **_style(label, styles))
        ax.annotate(label, (loss, t), textcoords="offset points", xytext=(6, dy), fontsize=7)
    ax.axvline(0.0, color="0.8", lw=0.8, zorder=1)
    if ratio:
        ax.axhline(1.0, color="0.8", lw=0.8, zorder=1)
    ax.set_title(f"{row.get('model', '?')} {row.get('size', '?')}", fontsize=10)
    ax.set_xlabel("Set5 PSNR loss vs float32 reference (dB)")
    ax.set_ylabel(f"time / {row.get('fused', 'fused')} (median ratio)" if ratio else "median ms")
    ax.grid(True, alpha=0.3)
    if missing:
        ax.text(0.0, -0.28, "no PSNR: " + ", ".join(missing), transform=ax.transAxes, fontsize=7, va="top")


def _subtitle(data: dict, rows: list[dict]) -> str:
    cpu = rows[0].get("cpu") or data.get("machine_info", {}).get("esr_cpu") or {}
    parts = [rows[0].get("device", "")]
    if cpu:
        parts.append(f"{cpu.get('cpu_model')}: esr ISA {cpu.get('running')} (CPU {cpu.get('cpu_level')}), "
                     f"torch {cpu.get('torch_cpu_capability')}, {cpu.get('threads')} threads")
    commit = data.get("commit_info", {}).get("id")
    if commit:
        parts.append(f"commit {commit[:10]}")
    return "\n".join(p for p in parts if p)  # one line each: a one-panel figure is narrow


def plot(data: dict, out: Path, ratio: bool = False) -> Path:
    """Draw every paired row of ``data`` into ``out`` (PNG); returns ``out``."""
    rows = paired_rows(data)
    if not rows:
        raise SystemExit("plot_frontier: the JSON has no bench_paired rows (extra_info.providers); "
                         "run pytest benchmarks/bench_paired.py --benchmark-only --benchmark-json FILE")
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_frontier: matplotlib is not installed (pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: no display on the benchmark machines
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.6 * cols, 4.6 * nrows + 1.0), squeeze=False)
    styles: dict = {}
    for ax, row in zip(axes.flat, rows):
        _panel(ax, row, ratio, styles)
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    fig.suptitle("Speed vs Set5 PSNR loss, per provider (lower left is better)\n" + _subtitle(data, rows),
                 fontsize=9)
    handles = [plt.Line2D([], [], linestyle="", **st) for st in styles.values()]
    ncol = max(1, min(len(handles), 2 * cols))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    legend_in = 0.22 * math.ceil(len(handles) / ncol) + 0.15  # inches the legend takes at the bottom
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", type=Path, help="pytest-benchmark JSON written by bench_paired.py")
    ap.add_argument("-o", "--output", type=Path, help="PNG to write (default: benchmarks/results/<json>-frontier.png)")
    ap.add_argument("--ratio", action="store_true", help="time as the ratio to fused_fp32 instead of ms")
    args = ap.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"plot_frontier: cannot read {args.json}: {exc}") from None
    out = args.output or RESULTS / f"{args.json.stem}-frontier{'-ratio' if args.ratio else ''}.png"
    print(plot(data, out, args.ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
