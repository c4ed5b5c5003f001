#!/usr/bin/env python3
"""Plots a mailtrail-bench results.json: throughput beside the broker ceiling, end-to-end
latency percentiles per run, and CPU per item by process. Usage: plot.py results.json out.png
(scripts/bench.sh runs it with matplotlib from target/bench-venv)."""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(results_path, out_path):
    with open(results_path) as f:
        r = json.load(f)

    bars = []  # (label, rate, unit)
    if "ceiling" in r:
        bars.append(("broker ceiling (3 hops)", r["ceiling"]["rate_per_s"]))
    if "smtp_ceiling" in r:
        bars.append(("SMTP server ceiling", r["smtp_ceiling"]["rate_per_s"]))
    if "closed" in r:
        bars.append(("mailtrail, no app bound", r["closed"]["rate_per_s"]))
    if "bound" in r:
        bars.append(("mailtrail, one app bound", r["bound"]["rate_per_s"]))
    if "peer" in r:
        bars.append(("hand-written peer", r["peer"]["rate_per_s"]))
    for w in r.get("webhooks", []):
        bars.append((f"webhook sink {w['mode']}", w["sink_rate_per_s"]))
        bars.append((f"  recorded ({w['mode']})", w["recorded_rate_per_s"]))

    latency = []  # (label, p50, p90, p99)
    for o in r.get("open", []):
        e = o["hops"]["end_to_end"]
        latency.append((f"open {o['offered_rate_per_s']:.0f}/s", e["p50_ms"], e["p90_ms"], e["p99_ms"]))

    cpu_runs = []
    for key, label, items in [
        ("closed", "mailtrail (no app)", r.get("settings", {}).get("emails")),
        ("bound", "mailtrail (app bound)", r.get("settings", {}).get("emails")),
        ("ceiling", "broker ceiling", r.get("ceiling", {}).get("messages")),
        ("peer", "hand-written peer", r.get("peer", {}).get("emails")),
    ]:
        if key in r and items:
            cpu_runs.append((label, r[key]["cpu"]["cpu_s"], items))

    fig, axes = plt.subplots(3, 1, figsize=(10, 11), dpi=72)
    date = r.get("machine", {}).get("date", "")[:16]
    m = r.get("machine", {})
    fig.suptitle(
        f"mailtrail-bench {date} — {m.get('nproc')} cores, RabbitMQ {m.get('rabbitmq')}, "
        f"PostgreSQL {m.get('postgresql')}",
        fontsize=11,
    )

    ax = axes[0]
    labels = [b[0] for b in bars][::-1]
    values = [b[1] for b in bars][::-1]
    ax.barh(labels, values, color="#4878a8")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}/s", va="center", fontsize=8)
    ax.set_xlabel("messages, emails or events per second")
    ax.set_title("Throughput", fontsize=10)
    ax.set_xlim(0, max(values + [1]) * 1.25)

    ax = axes[1]
    if latency:
        xs = range(len(latency))
        width = 0.25
        for i, (name, color) in enumerate([("p50", "#6aa84f"), ("p90", "#f1c232"), ("p99", "#cc4125")]):
            vals = [row[i + 1] for row in latency]
            ax.bar([x + (i - 1) * width for x in xs], vals, width, label=name, color=color)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([row[0] for row in latency])
        ax.axhline(100, color="grey", linestyle="--", linewidth=0.8)
        ax.text(len(latency) - 0.5, 100, " 100 ms target", fontsize=8, va="bottom", ha="right")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_ylabel("ms, publish → dispatched recorded")
    ax.set_title("End-to-end latency, open loop", fontsize=10)

    ax = axes[2]
    processes = ["rabbitmq", "postgresql", "operator", "dispatcher", "smtp-capture", "webhook-sink", "load generator"]
    colors = ["#f6b26b", "#6fa8dc", "#8e7cc3", "#93c47d", "#c27ba0", "#76a5af", "#999999"]
    left = [0.0] * len(cpu_runs)
    for proc, color in zip(processes, colors):
        vals = [run[1].get(proc, 0.0) * 1000.0 / run[2] for run in cpu_runs]
        ax.barh([run[0] for run in cpu_runs], vals, left=left, label=proc, color=color)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlabel("CPU milliseconds per email (or message)")
    ax.set_title("CPU per item, by process", fontsize=10)
    ax.legend(fontsize=7, ncol=4)

    fig.tight_layout()
    fig.savefig(out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
