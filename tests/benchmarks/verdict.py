"""Benchmark figures with their yardsticks: each printed beside its baseline from the same run and its target,
and judged. `bash tests/benchmarks/run.sh --check` collects the verdicts (through `BENCH_VERDICTS`, a file)
and exits non-zero when a target was missed. Machines are noisy: this is for people, not CI's pass/fail."""

from __future__ import annotations

import os


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def figure(name: str, value: float, target: float, *, at_least: bool, baseline: str = "", unit: str = "") -> bool:
    """Print `name: value unit (baseline …; target ≥/≤ target) met|MISSED` and record the verdict."""
    met = value >= target if at_least else value <= target
    sign = "≥" if at_least else "≤"
    context = f"baseline {baseline}; " if baseline else ""
    line = (f"{name}: {_num(value)}{unit} ({context}target {sign} {_num(target)}{unit}) "
            f"{'met' if met else 'MISSED'}")
    print(line)
    path = os.environ.get("BENCH_VERDICTS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return met


if __name__ == "__main__":  # run.sh: judge edge-infer bench's printed ratios (stdin) against the README's targets
    import re
    import sys

    text = sys.stdin.read()
    sys.stdout.write(text)
    targets = {"pipeline / slowest stage": (0.9, True, "the slowest stage alone"),
               "pipeline / naive loop": (1.25, True, "a naive loop at its best thread count, same run"),
               "pipeline / CPU-bound limit": (0.85, True, "cores ÷ (decode+preprocess + single-thread invoke)"),
               "to broker ack / naive loop": (1.25, True, "a naive loop at its best thread count, same run"),
               "to broker ack / CPU-bound limit": (0.85, True, "cores ÷ (decode+preprocess + single-thread invoke)"),
               "quality gate / pipeline frame time": (0.05, False, "the pipeline's frame time")}
    for label, (target, at_least, baseline) in targets.items():
        found = re.search(rf"^{re.escape(label)}\s+([\d.]+)", text, re.M)
        if found:
            figure(f"bench {label}", float(found.group(1)), target, at_least=at_least, baseline=baseline)
    rss = re.search(r"= ([\d.]+)\s*$", next((ln for ln in text.splitlines() if ln.startswith("steady RSS")), ""))
    if rss:
        figure("bench steady RSS / floor", float(rss.group(1)), 1.25, at_least=False, baseline="the floor, same run")
