"""The human half of the conversion report: Markdown with a PNG chart (accuracy and size per mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_markdown(report: dict[str, Any], path: Path) -> list[Path]:
    """Write `path` (Markdown) and, when matplotlib is installed, a chart next to it. Returns what was written."""
    written = [path]
    chart = path.with_suffix(".png")
    if write_chart(report, chart):
        written.append(chart)
    evaluation = report.get("evaluation", {})
    variants = evaluation.get("variants", {})
    float_size = next(iter(report["variants"].values()))["size_bytes"]  # float32, or a wrapped model
    over = report.get("refused", {})
    lines = [f"# Conversion report: {Path(report['model']).name}", "", *_contract_lines(report)]
    if chart in written:
        lines += [f"![accuracy and size per mode]({chart.name})", ""]
    lines += ["| variant | size | × float32 | top-1 | top-3 | drop (pts) | agreement | max abs Δ | RMSE | latency |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    source = evaluation.get("source")
    if source:
        lines.append(f"| source model (TensorFlow) | — | — | {source['accuracy']:.2%} | — | — | "
                     f"{source['top1_agreement_float32']:.2%} | — | — | — |")
    for mode, info in report["variants"].items():
        ev = variants.get(mode, {})

        def cell(key: str, fmt: str, ev: dict[str, Any] = ev) -> str:
            return fmt.format(ev[key]) if key in ev else "—"

        name = f"**{mode}** ✗ refused" if mode in over else mode
        lines.append(
            f"| {name} | {info['size_bytes']:,} B | {info['size_bytes'] / float_size:.2f} | "
            f"{cell('accuracy', '{:.2%}')} | {cell('top3_accuracy', '{:.2%}')} | "
            f"{cell('accuracy_drop_points', '{:+.2f}')} | {cell('agreement_with_float32', '{:.2%}')} | "
            f"{cell('output_max_abs_error', '{:.4f}')} | {cell('output_rmse', '{:.4f}')} | "
            f"{cell('latency_ms', '{:.3f} ms')} |"
        )
    if evaluation:
        lines += ["", f"Evaluated on {evaluation['examples']} inputs from `{evaluation['dataset']}` with "
                  f"{evaluation['runtime']} — the device's own decoding, preprocessing and runtime."]
    for mode, why in over.items():
        lines += ["", f"**Refused {mode}:** {why}."]
    lines += _target_lines(report.get("target"))
    labels = report["labels"]
    focus = report["mode"] if report["mode"] != "all" else "int8-only"
    chosen = [focus] if focus in variants else [m for m in variants if m != "float32"][-1:] or ["float32"]
    for mode in chosen:
        ev = variants.get(mode, {})
        if "per_class_accuracy" in ev and "per_class_accuracy" in variants.get("float32", {}):
            base = variants["float32"]["per_class_accuracy"]
            lines += ["", f"## Per-class accuracy ({mode} vs float32)", "", "| label | float32 | " + mode + " |",
                      "|---|---:|---:|"]
            lines += [f"| {label} | {base.get(label, 0):.2%} | {acc:.2%} |"
                      for label, acc in ev["per_class_accuracy"].items()]
        if "confusion" in ev:
            lines += ["", f"## Confusion matrix ({mode}; rows: true label, columns: predicted)", "",
                      "| | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
            lines += [f"| **{label}** | " + " | ".join(str(n) for n in row) + " |"
                      for label, row in zip(labels, ev["confusion"], strict=True)]
    layers = report.get("layer_errors")
    if layers:
        lines += ["", "## Per-layer quantization error (RMSE / scale, worst first)", "",
                  "| op | tensor | RMSE / scale |", "|---|---|---:|"]
        lines += [f"| {e['op']} | `{e['tensor'].split(';')[0]}` | {e['rmse_per_scale']:.3f} |" for e in layers[:10]]
    fallback = report.get("fallback")
    if fallback:
        verdict = "met the budget" if fallback["within_budget"] else "did not meet the budget"
        lines += ["", f"## Auto-fallback ({verdict})", "", "| step | kept in float | top-1 | drop (pts) | size |",
                  "|---:|---|---:|---:|---:|"]
        lines += [f"| {i} | `{st['kept_in_float'].split(';')[0]}` ({st['op']}) | {st['accuracy']:.2%} | "
                  f"{st['accuracy_drop_points']:.2f} | {st['size_bytes']:,} B |"
                  for i, st in enumerate(fallback["steps"], 1)]
    reference = report.get("reference", {}).get("image_quality")
    if reference:
        lines += ["", "## Input quality reference (what the device's gate calls normal)", "",
                  "| metric | p01 | p50 | p99 |", "|---|---:|---:|---:|"]
        lines += [f"| {metric} | {v['p01']:.4g} | {v['p50']:.4g} | {v['p99']:.4g} |"
                  for metric, v in reference.items() if isinstance(v, dict)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return written


def _target_lines(target: dict[str, Any] | None) -> list[str]:
    """`--target`: whether each variant runs on the profile's runtime (Markdown)."""
    if not target:
        return []
    lines = ["", f"## Target: {Path(target['profile']).name} ({target['runtime']}"
             + (f" {target['runtime_version']}" if target.get("runtime_version") else "") + ")", "",
             "| variant | needs runtime ≥ | result |", "|---|---|---|"]
    return lines + [f"| {m} | {v.get('min_runtime_version') or '—'} | "
                    f"{('runs: ' + v['ran_on']) if v.get('ran_on') else ('ok' if v['ok'] else '✗ ' + v['problem'])} |"
                    for m, v in target["variants"].items()]


def _contract_lines(report: dict[str, Any]) -> list[str]:
    """The input contract the converter chose and how it knows (Markdown)."""
    contract = report.get("input_contract")
    if not contract:
        return []
    spec = report["input"]
    lines = [f"**Input contract:** {spec['width']}×{spec['height']} {spec['color']} ({spec['resize']} resize), "
             f"{contract['range']} (normalise: `{contract['normalize']}`) — determined by "
             f"{contract['determined_by']}: {contract['detail']}.", ""]
    if contract.get("top1_by_range"):
        lines += ["Float32 top-1 on the labelled sample by input range: " + ", ".join(
            f"{name} {acc:.1%}" for name, acc in contract["top1_by_range"].items()) + ".", ""]
    return lines


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """Accuracy (or agreement) and size per mode, side by side. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    variants = report.get("evaluation", {}).get("variants", {})
    modes = list(report["variants"])
    sizes = [report["variants"][m]["size_bytes"] / 1024 for m in modes]
    key = "accuracy" if all("accuracy" in variants.get(m, {}) for m in modes) else "agreement_with_float32"
    quality = [variants.get(m, {}).get(key, 1.0 if m == "float32" else 0.0) * 100 for m in modes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    over = report.get("refused", {})
    colours = ["#c0392b" if m in over else "#2e86c1" for m in modes]
    left.bar(modes, quality, color=colours)
    left.set_ylabel("top-1 accuracy (%)" if key == "accuracy" else "agreement with float32 (%)")
    low = min(quality) if quality else 0
    left.set_ylim(max(0, low - 5), 100)
    for i, q in enumerate(quality):
        left.text(i, q, f"{q:.1f}", ha="center", va="bottom", fontsize=8)
    right.bar(modes, sizes, color="#7f8c8d")
    right.set_ylabel("size (KiB)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    fig.suptitle(f"{Path(report['model']).name}: what each quantization mode costs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_table(report: dict[str, Any]) -> None:
    """The comparison table: one line per variant."""
    evaluation = report.get("evaluation", {}).get("variants", {})
    float_size = next(iter(report["variants"].values()))["size_bytes"]  # float32, or a wrapped model
    over = report.get("refused", {})
    print(f"{'variant':<10} {'size':>11} {'× f32':>6} {'top-1':>8} {'top-3':>8} {'drop':>7} {'agree':>8} "
          f"{'max|Δ|':>7} {'latency':>9}")
    source = report.get("evaluation", {}).get("source")
    if source:
        print(f"{'source':<10} {'—':>11} {'—':>6} {source['accuracy'] * 100:>7.2f}% {'—':>8} {'—':>7} "
              f"{source['top1_agreement_float32'] * 100:>7.2f}% {'—':>7} {'—':>9}")
    for mode, info in report["variants"].items():
        ev = evaluation.get(mode, {})

        def pct(key: str, ev: dict[str, Any] = ev) -> str:
            return f"{ev[key] * 100:.2f}%" if key in ev else "—"

        drop = f"{ev['accuracy_drop_points']:+.2f}" if "accuracy_drop_points" in ev else "—"
        err = f"{ev['output_max_abs_error']:.3f}" if "output_max_abs_error" in ev else "—"
        lat = f"{ev['latency_ms']:.3f}ms" if "latency_ms" in ev else "—"
        flag = "  ✗ refused" if mode in over else ""
        print(f"{mode:<10} {info['size_bytes']:>10,}B {info['size_bytes'] / float_size:>6.2f} {pct('accuracy'):>8} "
              f"{pct('top3_accuracy'):>8} {drop:>7} {pct('agreement_with_float32'):>8} {err:>7} {lat:>9}{flag}")
    if evaluation:
        print(f"(evaluated on {report['evaluation']['examples']} inputs with {report['evaluation']['runtime']}; "
              "drop in top-1 points vs float32; max|Δ| = largest output difference vs float32"
              + ("; source: the TensorFlow model itself, agree = its top-1 agreement with float32" if source else "")
              + ")")


