#!/usr/bin/env python3
"""Markdown table for bench/compare from its results.jsonl (standard library only).

Usage: compare_table.py RESULTS_JSONL META_TXT   (sizes come from the environment
that bench/compare exports). Each line of RESULTS_JSONL is one run of one figure
against one server: {"run", "server", "figure", "report": <herald bench --json>,
...}. Cells are medians over the runs; loss, duplicates, reordering and failed
streams are flagged in the cell, never hidden.
"""

import json
import os
import statistics
import sys

SERVERS = ["floor", "herald", "nchan-1w", "nchan-2w", "pushpin"]
TITLES = {
    "floor": "floor",
    "herald": "Herald",
    "nchan-1w": "Nchan 1w",
    "nchan-2w": "Nchan 2w",
    "pushpin": "Pushpin",
}


def env(name, default="?"):
    return os.environ.get(name, default)


def num(n):
    try:
        return f"{int(n):,}"
    except ValueError:
        return n


# Rows: (figure id, label, unit, higher_is_better[, metric]). A figure gives
# one row, or several (metric: which number of its report the row shows;
# "main" = the figure's usual one: deliveries/s, or p99 for lat).
FIGURES = [
    ("conns", f"memory per idle stream, {num(env('CONNS'))} open (KiB, lower is better)", "kib", False),
    ("bbig", f"broadcast {num(env('BBIG_SUBS'))} subs × {num(env('BBIG_EVENTS'))} events flat out: deliveries/s", "rate", True),
    ("bbigbatch", f"same, Herald with batch publish ({env('BATCH')} events per request)", "rate", True),
    ("bsmall", f"broadcast {num(env('BSMALL_SUBS'))} subs × {num(env('BSMALL_EVENTS'))} events flat out: deliveries/s", "rate", True),
    ("bsmallbatch", f"same, Herald with batch publish ({env('BATCH')} events per request)", "rate", True),
    ("lat", f"p99 publish→receive, {num(env('LAT_SUBS'))} subs × {env('LAT_RATE')} events/s (ms, lower is better)", "ms", False),
    ("uni", f"unicast {num(env('UNI_USERS'))} users, {num(env('UNI_EVENTS'))} events, {env('PUBLISHERS')} publishers: events/s delivered", "rate", True),
    ("unibatch", f"same, Herald with batch publish ({env('BATCH')} events per request)", "rate", True),
    ("durable", f"durable acknowledged publishes/s, embedded log (`process`), {num(env('DURABLE_EVENTS'))} events, {env('DURABLE_CONCURRENCY')} requests in flight", "rate", True),
    ("durablebatch", f"same, {num(env('DURABLE_BATCH_EVENTS'))} events in batches of {env('BATCH')}", "rate", True),
    ("tpaced", f"p99 publish→receive, {num(env('TPACED_SUBS'))} subs × {env('TPACED_RATE')} events/s, {env('PUBLISHERS')} publishers, text/plain (ms, lower is better)", "ms", False, "p99"),
    ("tuni", f"unicast {num(env('TUNI_USERS'))} users, {num(env('TUNI_EVENTS'))} events, {env('PUBLISHERS')} publishers, text/plain: events/s delivered", "rate", True),
    ("tuni", "same: p99 publish→receive (ms, lower is better)", "ms", False, "p99"),
    ("tflood", f"broadcast flood, {num(env('TFLOOD_SUBS'))} subs, {env('PUBLISHERS')} publishers flat out (≤ {num(env('TFLOOD_EVENTS'))} events, ≤ {env('TFLOOD_PUBLISH_SECS')} s), text/plain: deliveries/s", "rate", True),
    ("tflood", f"same: deliveries still outstanding {env('TFLOOD_BACKLOG_SECS')} s after the last acknowledged publish (lower is better)", "count", False, "backlog"),
    ("tflood", "same: drain time, last acknowledged publish → last receive (s, lower is better)", "secs", False, "drain"),
]
FIGURES = [f if len(f) == 5 else (*f, "p99" if f[0] == "lat" else "main") for f in FIGURES]
FIGURE_IDS = list(dict.fromkeys(f[0] for f in FIGURES))

def first(report, *keys):
    """The first of `keys` present in `report` (field names differ by subcommand)."""
    for key in keys:
        if isinstance(report, dict) and report.get(key) is not None:
            return report[key]
    return None


def extract(line, metric="main"):
    """(value, problems) of one run for one row; value None when the run gave
    no figure. `metric`: main, p99, backlog or drain (see FIGURES)."""
    report = line.get("report")
    figure = line["figure"]
    if not isinstance(report, dict):
        return None, [line.get("error", "no report")]
    problems = []
    if figure == "conns":
        before, during = line.get("mem_before_kib"), line.get("mem_open_kib")
        streams = line.get("server_streams") or 0
        opened = first(report, "opened") or 0
        failed = first(report, "failed") or 0
        if failed:
            problems.append(f"{num(failed)} failed")
        if streams and streams < opened:
            problems.append(f"{num(opened - streams)} closed by the server")
        count = min(streams, opened) if streams else opened
        if not count or before is None or during is None:
            return None, problems or ["no streams"]
        return (during - before) / count, problems
    failed = first(report, "failed") or 0
    if failed:
        problems.append(f"{num(failed)} subs failed")
    expected = first(report, "expected") or 0
    missing = first(report, "missing") or 0
    if missing:
        share = 100.0 * missing / expected if expected else 0.0
        problems.append(f"lost {share:.2g}%")
    for key, word in (("duplicates", "dup"), ("out_of_order", "reordered")):
        if first(report, key):
            problems.append(f"{num(report[key])} {word}")
    if first(report, "timed_out"):
        problems.append("timed out")
    for key, word in (("non_2xx", "refused"), ("errors", "failed requests")):
        if first(report, key):
            problems.append(f"{num(report[key])} {word}")
    if metric == "p99":
        latency = first(report, "latency_ms") or {}
        value = latency.get("p99") if isinstance(latency, dict) else None
        if not latency.get("samples") if isinstance(latency, dict) else True:
            value = None
        return value, problems
    if metric == "backlog":
        # Not measured when the run ended first with deliveries missing.
        value = report.get("outstanding_after")
        return value, problems if value is not None else problems + ["backlog not measured"]
    if metric == "drain":
        return (report.get("drain_secs") if report.get("unique") else None), problems
    value = first(report, "deliveries_per_sec", "delivered_per_sec", "events_per_sec", "publishes_per_sec")
    if not value:
        return None, problems or ["nothing delivered"]
    return value, problems


def flags(problems):
    """`lost 0.03% / 0.13%, 2 dup`: one entry per kind, the runs' values joined."""
    kinds = {}
    for problem in problems:
        words = problem.split(" ")
        # "lost 0.1%" and "timed out" start with the kind; "12 dup" ends with it.
        kind = words[0] if not words[0][0].isdigit() else " ".join(words[1:])
        kinds.setdefault(kind, []).append(problem)
    out = []
    for kind, texts in kinds.items():
        texts = list(dict.fromkeys(texts))
        if kind == "lost":
            out.append("lost " + " / ".join(t.split(" ", 1)[1] for t in texts))
        else:
            out.append(" / ".join(texts))
    return ", ".join(out)


def refusals(line):
    """`refused 12 × 503 overloaded`: the publishes the server refused (and
    the bench retried after Retry-After), which are not a fault."""
    report = line.get("report")
    refused = report.get("publish_refused") if isinstance(report, dict) else None
    if not refused:
        return None
    return "refused " + ", ".join(f"{num(n)} × {cause}" for cause, n in sorted(refused.items()))


def fmt(value, unit):
    if value is None:
        return "—"
    if unit == "count":
        if value >= 1e6:
            return f"{value / 1e6:.1f} M"
        if value >= 1e4:
            return f"{value / 1e3:.0f} k"
        return f"{value:,.0f}"
    if unit == "secs":
        return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"
    if unit == "kib":
        return f"{value:.1f}"
    if unit == "ms":
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M/s"
    if value >= 1e3:
        return f"{value / 1e3:.0f} k/s"
    return f"{value:.0f}/s"


# Servers whose every run must be clean under --check: ours. The peers' known
# faults (Pushpin drops streams under load) are flagged in the table only.
STRICT_SERVERS = ("floor", "herald")


def check(path):
    """Exit status for `--check`: 1 if any run gave no figure, or a run of
    Herald or the floor lost, duplicated or reordered events or failed to
    open streams. The smoke run in CI uses it, so the benches cannot rot."""
    bad = []
    with open(path) as f:
        for line in map(json.loads, filter(str.strip, f)):
            # The figure's first row: its main number.
            metric = next(m for f, _, _, _, m in FIGURES if f == line["figure"])
            value, problems = extract(line, metric)
            where = f"run {line['run']} {line['server']} {line['figure']}"
            if value is None:
                bad.append(f"{where}: no figure ({', '.join(problems) or 'no report'})")
            elif problems and line["server"] in STRICT_SERVERS:
                bad.append(f"{where}: {', '.join(problems)}")
    for problem in bad:
        print(f"compare --strict: {problem}", file=sys.stderr)
    return 1 if bad else 0


def main():
    if sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    path, meta_path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    runs = int(env("RUNS", "1"))
    servers = [s for s in SERVERS if s in env("SERVERS", " ".join(SERVERS)).split()]
    wanted = env("FIGURES", " ".join(FIGURE_IDS)).split()
    figures = [f for f in FIGURES if f[0] in wanted]

    # (figure, metric, server) -> (median or None, problems, values, notes)
    cells = {}
    for figure, _, _, _, metric in figures:
        for server in servers:
            values, problems, notes = [], [], []
            for line in lines:
                if line["figure"] == figure and line["server"] == server:
                    value, probs = extract(line, metric)
                    if value is not None:
                        values.append(value)
                    problems += probs
                    refused = refusals(line)
                    if refused:
                        notes.append(refused)
            if values or problems:
                median = statistics.median(values) if values else None
                cells[(figure, metric, server)] = (median, problems, values, notes)

    out = []
    with open(meta_path) as f:
        meta = f.read().strip()
    out.append("```text\n" + meta + "\n```\n")
    header = ["figure"] + [TITLES[s] for s in servers]
    ratio_cols = []
    if "herald" in servers:
        if "floor" in servers:
            ratio_cols.append(("Herald / floor", ["floor"]))
        nchans = [s for s in ("nchan-1w", "nchan-2w") if s in servers]
        if nchans:
            ratio_cols.append(("Herald / best Nchan", nchans))
        if "pushpin" in servers:
            ratio_cols.append(("Herald / Pushpin", ["pushpin"]))
    header += [title for title, _ in ratio_cols]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + " --- |" * len(header))
    notes = []
    for figure, label, unit, higher, metric in figures:
        row = [label]
        for server in servers:
            cell = cells.get((figure, metric, server))
            if cell is None:
                row.append("—")
                continue
            median, problems, values, cell_notes = cell
            text = fmt(median, unit) if median is not None else "failed"
            if problems:
                text += " ⚠ " + flags(problems)
            if cell_notes and metric == "main":
                text += " (" + " / ".join(dict.fromkeys(cell_notes)) + ")"
            if median is not None and len(values) < runs:
                text += f" ({len(values)} of {runs} runs)"
            row.append(text)
        herald = cells.get((figure, metric, "herald"), (None,))[0]
        for _, peers in ratio_cols:
            # Batch publish is Herald's alone: compare with the peers' one
            # event per request.
            peer_figure = figure.removesuffix("batch")
            candidates = []
            for peer in peers:
                value, problems, _, _ = cells.get((peer_figure, metric, peer), (None, [], [], []))
                if value is not None:
                    candidates.append((bool(problems), -value if higher else value, value))
            if herald is None or not candidates:
                row.append("—")
                continue
            # Best peer: lossless first, then the best value.
            best = min(candidates)[2]
            row.append(f"{herald / best:.2f}×" if best else "—")
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.append(
        f"Medians of {runs} run(s). Ratios are Herald's value over the peer's: above 1× is more "
        "throughput, or more memory / latency in the rows where lower is better. "
        "\"best Nchan\" is the better of 1 and 2 workers. Every server gets one event "
        "per publish request; the batch rows (Herald only) are compared with the peers' "
        "row above them. ⚠ marks loss, duplicates, "
        "reordering or streams that did not open, in any run. The t* rows (tpaced, tuni, "
        "tflood) publish the same 100-byte text/plain body to every server but Pushpin "
        "(its JSON control API), from several publishers, each on its own connection; "
        "order is checked per publisher. \"refused N × 503 overloaded\" counts publishes "
        "the server refused and the bench retried after Retry-After (not a fault); a "
        "backlog is not a fault either."
    )
    out.extend(notes)

    # Per-run details, for the record.
    out.append("\n<details><summary>every run</summary>\n")
    out.append("| figure | server | run | value | subs ok / failed | missing | dup | reordered | p50 / p99 ms | window s |")
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for line in sorted(lines, key=lambda l: (FIGURE_IDS.index(l["figure"]), SERVERS.index(l["server"]), l["run"])):
        report = line.get("report") if isinstance(line.get("report"), dict) else {}
        metric, unit = next((m, u) for f, _, u, _, m in FIGURES if f == line["figure"])
        value, _ = extract(line, metric)
        latency = report.get("latency_ms") or {}
        ok = first(report, "connected", "opened")
        out.append(
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |".format(
                line["figure"], line["server"], line["run"], fmt(value, unit),
                ok if ok is not None else "?", first(report, "failed") or 0,
                first(report, "missing") or 0, first(report, "duplicates") or 0,
                first(report, "out_of_order") or 0,
                f"{latency.get('p50', '?')} / {latency.get('p99', '?')}" if latency else "—",
                first(report, "delivery_window_secs", "open_secs") or "—",
            )
        )
    out.append("\n</details>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
