"""The output half of ``vidseg bench``: targets (PASS/MISS), the printed report and the bar chart."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from vidseg_ros.tools.bench_measure import COLOUR_SIZE, STAGES

COLOUR_LIMIT_MS = 2.0
NETWARP_LIMIT = 1.15
#: TWNet's mean cost per frame / per-frame step: 0.6 from the speed issue (PyTorch), 0.5 under onnxruntime.
TWNET_LIMITS = {"onnxruntime": 0.5}
TWNET_LIMIT = 0.6
#: TDNet's step / per-frame step (the TDNet issue: at most 0.6x the shipped per-frame model).
TDNET_LIMIT = 0.6
#: Through seg_node (first size, one thread): onnxruntime's median per-frame total / PyTorch's, the least
#: fraction of pixels whose mask agrees with PyTorch's, and the fraction of frames answered.
NODE_RATIO_LIMIT = 0.5
NODE_AGREEMENT_LIMIT = 0.995


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target as ``{name, size, backend, value, limit, unit, op, pass, detail}`` (``op``: <= or >=)."""
    ref = result["config"]["sizes"][0]
    k = result["config"]["key_interval"]
    out = []

    def target(
        name: str, size: str, value: float, limit: float, unit: str, detail: str, **extra: Any
    ) -> None:
        op = extra.pop("op", "<=")
        ok = bool(np.isfinite(value) and (value <= limit if op == "<=" else value >= limit))
        out.append(
            {
                "name": name,
                "size": size,
                **extra,
                "value": value,
                "limit": limit,
                "unit": unit,
                "op": op,
                "pass": ok,
                "detail": detail,
            }
        )

    for name, run in result["backends"].items():
        for size, m in run["models"].items():
            pf = m["perframe"]["key_ms"]
            target(
                "netwarp_vs_perframe_excl_flow",
                size,
                m["netwarp"]["nonkey_ms"] / pf,
                NETWARP_LIMIT,
                "x",
                "NetWarp non-key step / per-frame step",
                backend=name,
            )
            if "tdnet" in m:
                target(
                    "tdnet_vs_perframe",
                    size,
                    m["tdnet"]["nonkey_ms"] / pf,
                    TDNET_LIMIT,
                    "x",
                    "TDNet step (one sub-network + attention + head) / per-frame step",
                    backend=name,
                )
            if "grfp" in m:
                target(
                    "grfp_vs_perframe_excl_flow",
                    size,
                    m["grfp"]["nonkey_ms"] / pf,
                    NETWARP_LIMIT,
                    "x",
                    "GRFP non-key step / per-frame step",
                    backend=name,
                )
            target(
                "twnet_avg_vs_perframe",
                size,
                m["twnet"]["avg_ms"] / pf,
                TWNET_LIMITS.get(name, TWNET_LIMIT),
                "x",
                f"TWNet mean per frame at key interval {k} incl. flow / per-frame",
                backend=name,
            )
    main = result["config"]["backend"]
    target(
        "dis_vs_perframe",
        ref,
        result["dis_fraction"][ref],
        0.15,
        "x",
        "DIS flow / per-frame step",
        backend=main,
    )
    target(
        "node_overhead_p50", ref, result["node_overhead"]["total_ms"], 3.0, "ms", "decode + encode + publish"
    )
    size = "x".join(map(str, COLOUR_SIZE))
    target(
        "colour_overlay_p50",
        size,
        result["colour"][size]["total_ms"],
        COLOUR_LIMIT_MS,
        "ms",
        "colorize + overlay, 1 OpenCV thread",
    )
    compared = result.get("node_compare", {})
    for method, n in ({} if "skipped" in compared else compared).items():
        if "skipped" in n:
            continue
        base, other = n["backends"]
        target(
            "node_total_vs_torch",
            n["size"],
            n["ratio"],
            NODE_RATIO_LIMIT,
            "x",
            f"seg_node {method}: median per-frame total, {other} / {base}",
            backend=other,
        )
        target(
            "node_mask_agreement",
            n["size"],
            n["agreement_min"],
            NODE_AGREEMENT_LIMIT,
            "",
            f"seg_node {method}: least fraction of pixels equal to {base}'s mask",
            backend=other,
            op=">=",
        )
        target(
            "node_frames_answered",
            n["size"],
            n["answered_fraction"],
            1.0,
            "",
            f"seg_node {method}: frames answered by both nodes / sent",
            backend=other,
            op=">=",
        )
    return out


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def _print_comparison(result: dict[str, Any]) -> None:
    comp = result["comparison"]
    if "skipped" in comp:
        print(f"\nBackends side by side: skipped ({comp['skipped']})")
        return
    names, k = comp["backends"], result["config"]["key_interval"]
    base = names[0]
    print(f"\nBackends side by side, same run (interleaved), model step ms p50; avg@{k} incl. flow; "
          f"ratios to {base} and to the per-frame step of the same backend")  # fmt: skip
    head = (
        ["size", "method", "step"] + names + [f"{n}/{base}" for n in names[1:]] + [f"{n} /pf" for n in names]
    )
    print(f"{head[0]:10} {head[1]:9} {head[2]:8}" + "".join(f"{c:>17}" for c in head[3:]))
    for size, methods in comp["sizes"].items():
        pf = {n: methods["perframe"]["key_ms"][n] for n in names}
        for method, row in methods.items():
            for step in ("key", "nonkey", "avg"):
                values = row[f"{step}_ms"]
                if values[base] is None or (method == "perframe" and step != "key"):
                    continue
                cells = [_f(values[n]) for n in names]
                cells += [f"{row['ratio'][n][step]:.2f}x" for n in names[1:]]
                cells += [f"{values[n] / pf[n]:.2f}x" for n in names]
                print(f"{size:10} {method:9} {step:8}" + "".join(f"{c:>17}" for c in cells))


def _print_node_compare(result: dict[str, Any]) -> None:
    compared = result.get("node_compare", {})
    if "skipped" in compared:
        print(f"seg_node backends side by side: skipped ({compared['skipped']})")
        return
    for method, n in compared.items():
        if "skipped" in n:
            print(f"seg_node {method}, backends side by side: skipped ({n['skipped']})")
            continue
        base, other = n["backends"]
        t, e = n["total_p50_ms"], n["e2e_p50_ms"]
        print(f"seg_node {method} at {n['size']}, {n['frames']} frames each, interleaved: median total "
              f"{base} {t[base]:.1f} ms, {other} {t[other]:.1f} ms ({n['ratio']:.2f}x); publish -> mask "
              f"{e[base]:.1f} / {e[other]:.1f} ms; masks agree on {100 * n['agreement_mean']:.2f}% of pixels "
              f"(worst frame {100 * n['agreement_min']:.2f}%); answered {n['answered'][base]}/{n['frames']} and "
              f"{n['answered'][other]}/{n['frames']}")  # fmt: skip


def print_report(result: dict[str, Any]) -> None:
    cfg, models = result["config"], result["models"]
    k = cfg["key_interval"]
    print(f"\nModel steps on {cfg['backend']}, ms (p50); avg@{k}: mean per frame with a key frame every {k}, "
          "non-key frames incl. flow;")  # fmt: skip
    print("ratios to the per-frame step; GFLOP: conv/matmul multiply-adds x2")
    head = ("key", "non-key", "flow", f"avg@{k}", "nk/pf", "avg/pf", "GFLOP k", "GFLOP nk", "FLOPavg/pf")
    print(f"{'size':10} {'method':9}" + "".join(f"{c:>11}" for c in head))
    for size, m in models.items():
        pf, pf_flop = m["perframe"]["key_ms"], m["perframe"]["gflop_key"]
        for method, r in m.items():
            nk = r["nonkey_ms"] or r["key_ms"]
            cells = [_f(r["key_ms"]), _f(r["nonkey_ms"]), _f(r["flow_ms"]), _f(r["avg_ms"])]
            cells += [f"{nk / pf:.2f}x", f"{r['avg_ms'] / pf:.2f}x", f"{r['gflop_key']:.3g}"]
            cells += [
                "-" if r["gflop_nonkey"] is None else f"{r['gflop_nonkey']:.3g}",
                f"{r['gflop_avg'] / pf_flop:.2f}x",
            ]
            print(f"{size:10} {method:9}" + "".join(f"{c:>11}" for c in cells))
    _print_comparison(result)
    print("\nAverage frame by stage, ms (p50; decode/publish from the rclpy measurement at that size)")
    print(f"{'size':10} {'method':9} " + " ".join(f"{s:>11}" for s in STAGES) + f" {'total':>8}")
    for size, m in models.items():
        for method, r in m.items():
            print(
                f"{size:10} {method:9} "
                + " ".join(f"{_f(r['stages_ms'][s]):>11}" for s in STAGES)
                + f" {_f(r['total_ms']):>8}"
            )
    print("\nNetWarp extra cost per frame (flow + FlowCNN + warp + fusion), ms")
    for size, x in result["netwarp_extra"].items():
        print(f"{size:10} flow {_f(x['flow_ms'])} + FlowCNN/warp {_f(x['flowcnn_warp_ms'])} = {_f(x['extra_ms'])}"
              f" = {100 * x['fraction_of_perframe']:.1f}% of per-frame")  # fmt: skip
    for size, frac in result["dis_fraction"].items():
        print(f"DIS flow at {size}: {100 * frac:.1f}% of the per-frame step")
    print("\nTDNet per frame with a full cache, PyTorch eager, ms (p50)")
    for size, x in result.get("tdnet_split", {}).items():
        print(f"{size:10} sub-network {_f(x['subnetwork_ms'])} + attention {_f(x['attention_ms'])} + head "
              f"{_f(x['head_ms'])}")  # fmt: skip
    io = result["node_overhead"]
    print(f"\nNode overhead without the model at {io['size']} (p50): decode {io['decode_ms']:.3f} + encode "
          f"{io['encode_ms']:.3f} + publish {io['publish_ms']:.3f} = {io['total_ms']:.3f} ms")  # fmt: skip
    print(f"\nColour + overlay per published frame, ms (p50, 1 OpenCV thread; target <= {COLOUR_LIMIT_MS:g} at "
          f"{COLOUR_SIZE[0]}x{COLOUR_SIZE[1]})")  # fmt: skip
    print(f"{'size':10} {'colorize':>9} {'overlay':>9} {'total':>9}")
    for size, c in result["colour"].items():
        verdict = ""
        if size == "x".join(map(str, COLOUR_SIZE)):
            verdict = "  PASS" if c["total_ms"] <= COLOUR_LIMIT_MS else "  MISS"
        print(f"{size:10} {c['colorize_ms']:9.3f} {c['overlay_ms']:9.3f} {c['total_ms']:9.3f}{verdict}")
    nl = result["node_latency"]
    if "skipped" in nl:
        print(f"Node end-to-end: skipped ({nl['skipped']})")
    else:
        st = nl["node_stages_p50_ms"]
        print(f"Node end-to-end, {nl['method']} on {nl.get('backend', '?')} at {nl['size']}, {nl['frames']} frames: "
              f"publish -> mask p50 {nl['e2e_p50_ms']:.1f} ms (p90 {nl['e2e_p90_ms']:.1f}); node's own total p50 "
              f"{st.get('total', float('nan')):.1f}; bare Stream.step p50 {nl['bare_step_p50_ms']:.1f}; overhead "
              f"{nl['overhead_p50_ms']:.1f} ms")  # fmt: skip
    _print_node_compare(result)
    print("\nTargets")
    for t in result["targets"]:
        unit = "ms" if t["unit"] == "ms" else t["unit"]
        where = f" [{t['backend']}]" if "backend" in t else ""
        print(f"  {'PASS' if t['pass'] else 'MISS'}  {t['name'] + where:44} {t['size']:10} {t['value']:.3f}{unit} "
              f"{t['op']} {t['limit']:g}{unit}  ({t['detail']})")  # fmt: skip


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked stage bars per size and method, one panel per size; every compared backend side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, runs = result["config"], result["backends"]
    sizes = list(result["models"])
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(4.2 * len(sizes) * max(1, len(runs) - 0.3), 4.2), squeeze=False
    )
    colors = plt.get_cmap("tab10").colors
    for ax, size in zip(axes[0], sizes, strict=True):
        bars = [
            (f"{m}\n{n}" if len(runs) > 1 else m, r["models"][size][m])
            for n, r in runs.items()
            for m in r["models"][size]
        ]
        bottom = np.zeros(len(bars))
        for i, stage in enumerate(STAGES):
            vals = np.array([r["stages_ms"][stage] for _, r in bars])
            ax.bar([label for label, _ in bars], vals, bottom=bottom, color=colors[i], label=stage)
            bottom += vals
        for x, total in enumerate(bottom):
            ax.text(x, total, f"{total:.0f}", ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
        ax.set_title(size)
        ax.set_ylabel(f"ms per frame (avg, key every {cfg['key_interval']})")
    axes[0][0].legend(fontsize=7)
    verdicts = ", ".join(
        f"{t['name']}@{t['size']}{'/' + t['backend'] if 'backend' in t else ''} {'PASS' if t['pass'] else 'MISS'}"
        for t in result["targets"]
    )
    fig.suptitle(
        "\n".join(
            [
                f"vidseg bench: {result['machine']['summary']}, {cfg['backend']} {cfg['precision']} on {cfg['device']}",
                *textwrap.wrap(verdicts, 160),
            ]
        ),
        fontsize=7,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
