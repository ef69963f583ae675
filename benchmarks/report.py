"""The table of the side-by-side benchmarks (printed, and written to ``docs/performance.md``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from scenarios import Results


__all__ = ["Metric", "METRICS", "scale_metrics", "table", "verdicts", "markdown"]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str  # "ms", "s", "%", "MB", "lines/s", "us"
    factor: float = 1.0  # sample -> unit
    target: str = ""
    check: Callable[[dict[str, float], Results], bool | None] | None = None


def _med(results: Results, key: str, kind: str) -> float:
    values = results.samples.get(key, {}).get(kind) or []
    return statistics.median(values) if values else math.nan


def _ratio_at_least(key: str, factor: float) -> Callable[[dict[str, float], Results], bool]:
    def check(m: dict[str, float], _: Results) -> bool:
        return m["ratio"] >= factor

    return check


def _independent(m: dict[str, float], r: Results) -> bool:
    one, three = _med(r, "status_1off", "ours"), _med(r, "status_3off", "ours")
    return m["ratio"] >= 10 and three <= max(1.5 * one, one + 0.05)


def _start_check(m: dict[str, float], r: Results) -> bool:
    """``reconnect --force`` at start: 1.4x the original and within 10% of the floor (the
    same flicamera processes started at once on the host, `floor.py`)."""

    floor = _med(r, "floor_all", "bare")
    return m["ratio"] >= 1.4 and not math.isnan(floor) and m["ours"] <= 1.1 * floor


METRICS: list[Metric] = [
    Metric("status_up", "status, all nodes up", "ms", 1e3, ">= 3x", _ratio_at_least("", 3)),
    Metric(
        "status_1off",
        "status, 1 node off: from the power-off",
        "ms",
        1e3,
        ">= 10x",
        _ratio_at_least("", 10),
    ),
    Metric(
        "status_3off",
        "status, 3 nodes off: from the power-off",
        "ms",
        1e3,
        ">= 10x, ~ 1 off",
        _independent,
    ),
    Metric(
        "status_1off_known", "status, 1 node off: once fliswarm has marked it offline", "ms", 1e3
    ),
    Metric(
        "status_3off_known",
        "status, 3 nodes off: once fliswarm has marked them offline",
        "ms",
        1e3,
    ),
    Metric(
        "status_cut",
        "status, 1 node's network cut (6 s after)",
        "ms",
        1e3,
        ">= 3x",
        _ratio_at_least("", 3),
    ),
    Metric(
        "reconnect_start.ready",
        "reconnect --force right after start (supervisor at work): all talking",
        "s",
        1,
        ">= 1.4x, <= floor + 10%",
        _start_check,
    ),
    Metric("reconnect_cached.cmd", "reconnect --force, cached: command", "s"),
    Metric(
        "reconnect_cached.ready",
        "reconnect --force, cached: all talking",
        "s",
        1,
        ">= 2x",
        _ratio_at_least("", 2),
    ),
    Metric("reconnect_cold.cmd", "reconnect --force, cold pulls: command", "s"),
    Metric(
        "reconnect_cold.ready",
        "reconnect --force, cold pulls: all talking",
        "s",
        1,
        ">= 2x",
        _ratio_at_least("", 2),
    ),
    Metric("talk_one", "talk -n gfa1 status", "ms", 1e3),
    Metric("talk_all", "talk status (all)", "ms", 1e3),
    Metric("talk_expose", "talk -c gfa expose 0.1", "ms", 1e3),
    Metric(
        "relay_added_ms",
        "relay: added to a talk round trip",
        "ms",
        1,
        "ours <= 0.5 ms",
        lambda m, _: m["ours"] <= 0.5,
    ),
    Metric(
        "relay_lines_per_s",
        "relay: lines/s, 20 concurrent talk status",
        "lines/s",
        1,
        "ours >= orig",
        lambda m, _: m["ours"] >= m["orig"],
    ),
    Metric(
        "relay_cpu_us_per_line",
        "relay: actor CPU per relayed line",
        "us",
        1,
        ">= 4x",
        _ratio_at_least("", 4),
    ),
    Metric(
        "rss_growth_mb",
        "RSS growth after 5000 talk (smoke 300)",
        "MB",
        1,
        "ours <= 5 MB",
        lambda m, _: abs(m["ours"]) <= 5,
    ),
    Metric(
        "recovery",
        "container killed -> talk works",
        "s",
        1,
        "ours <= 5 s, no operator",
        lambda m, _: m["ours"] <= 5,
    ),
    Metric(
        "idle_cpu_pct",
        "idle CPU (% of a core)",
        "%",
        1,
        "<= orig + 0.5",
        lambda m, _: m["ours"] <= m["orig"] + 0.5,
    ),
    Metric("idle_rss_mb", "idle RSS", "MB"),
]


def scale_metrics(counts: list[int]) -> list[Metric]:
    out = []
    first = counts[0] if counts else 0
    for count in counts:
        target, check = "", None
        if count == counts[-1] and count != first:

            def check(m: dict[str, float], r: Results, count: int = count) -> bool:
                return m["ours"] <= 2 * _med(r, f"scale_status_{first}", "ours")

            target = f"ours <= 2x at {first}"
        out.append(
            Metric(f"scale_status_{count}", f"status, {count} nodes", "ms", 1e3, target, check)
        )
    for count in counts:
        target, check = "", None
        if count == counts[-1]:
            target, check = "ours <= orig", lambda m, _: m["ours"] <= m["orig"]
        out.append(
            Metric(f"scale_talk_{count}", f"talk status, {count} nodes", "ms", 1e3, target, check)
        )
    return out


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _cell(values: list[float], factor: float) -> str:
    if not values:
        return "-"
    scaled = [v * factor for v in values]
    return (
        f"{_fmt(statistics.median(scaled))} "
        f"[{_fmt(min(scaled))}-{_fmt(max(scaled))}] n={len(scaled)}"
    )


def _at_floor(m: dict[str, float], floor: float) -> str | None:
    """Which median is at or below the measurement floor: ``fliswarm``, ``original``,
    ``both`` or `None`."""

    low = [k for k in ("orig", "ours") if not math.isnan(m[k]) and abs(m[k]) <= floor * 1.000001]
    if not low:
        return None
    return "both" if len(low) == 2 else {"orig": "original", "ours": "fliswarm"}[low[0]]


def table(results: Results, metrics: list[Metric]) -> list[list[str]]:
    """Rows: metric, unit, original, ours, ratio orig/ours, target, met.

    A metric with a measurement floor (`Results.floors`: one clock tick of CPU time, one page
    of RSS) gets no ratio when either median is at or below its floor: the ratio column then
    says which side is at the floor and what the floor is.
    """

    rows = [
        [
            "scenario",
            "unit",
            "original: median [min-max]",
            "fliswarm",
            "orig/ours",
            "target",
            "met",
        ]
    ]
    for metric in metrics:
        data = results.samples.get(metric.key)
        if not data:
            continue
        orig, ours = data.get("orig", []), data.get("ours", [])
        m = {
            "orig": statistics.median(orig) * metric.factor if orig else math.nan,
            "ours": statistics.median(ours) * metric.factor if ours else math.nan,
        }
        m["ratio"] = m["orig"] / m["ours"] if m["ours"] and not math.isnan(m["ours"]) else math.nan
        ratio = _fmt(m["ratio"])
        if metric.key in results.floors:
            value, name = results.floors[metric.key]
            floor = value * metric.factor
            low = _at_floor(m, floor)
            if low is not None:
                m["ratio"] = math.nan
                ratio = f"n/a: {low} at floor ({name} = {_fmt(floor)} {metric.unit})"
        met = ""
        if metric.check is not None and not math.isnan(m["ours"]):
            try:
                ok = metric.check(m, results)
            except (ZeroDivisionError, KeyError):
                ok = None
            met = (
                "-"
                if ok is None or (math.isnan(m["orig"]) and "orig" in metric.target)
                else ("yes" if ok else "NO")
            )
        rows.append(
            [
                metric.label,
                metric.unit,
                _cell(orig, metric.factor),
                _cell(ours, metric.factor),
                ratio,
                metric.target,
                met,
            ]
        )
    return rows


def verdicts(rows: list[list[str]]) -> list[str]:
    return [f"{row[0]}: target {row[5]} NOT met" for row in rows[1:] if row[6] == "NO"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows[1:]:
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(out)
