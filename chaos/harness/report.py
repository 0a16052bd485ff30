"""The suite's report: report.json, report.md and one SVG timeline per scenario."""
import html
import json
import os

from . import cluster as cl

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
BREAKER_COLORS = {"closed": "#8fd18f", "open": "#e05555", "half_open": "#f0b040"}


def write(out_dir, verdicts, timelines):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(verdicts, f, indent=2)
    passed = sum(v["verdict"] == "PASS" for v in verdicts)
    lines = ["# meridian chaos report", "",
             f"{passed} of {len(verdicts)} verdicts PASS.", "",
             "| scenario | invariant | measured | bound | verdict |",
             "|---|---|---|---|---|"]
    for v in verdicts:
        cells = [v["scenario"], v["invariant"], v["measured"], v["bound"], f"**{v['verdict']}**"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    for name in timelines:
        lines.append(f"![{name}](timeline-{name}.svg)")
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def timeline_svg(path, ctx):
    """Draws admitted /limited rate, members alive and flaky-upstream breaker states per node."""
    if not ctx.load_window or not ctx.samples:
        return
    t0 = ctx.load_window[0] - 2
    t1 = max([s["t"] for s in ctx.samples] + [ctx.load_window[1] or t0 + 1]) + 1
    W, left, right = 960, 70, 20
    panel_h, gap = 140, 36
    nodes = [n.id for n in ctx.cluster.nodes]
    breaker_h = 18 * len(nodes) * 3
    H = 40 + 2 * (panel_h + gap) + breaker_h + 60

    def x(t):
        return left + (t - t0) / (t1 - t0) * (W - left - right)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14" font-weight="bold">{html.escape(ctx.name)}'
           f'</text>']
    top = 40
    bottom = 40 + 2 * (panel_h + gap) + breaker_h
    for f in ctx.faults:
        end = f["end"] or t1
        out.append(f'<rect x="{x(f["start"]):.1f}" y="{top}" width="{max(1, x(end) - x(f["start"])):.1f}" '
                   f'height="{bottom - top}" fill="#999" opacity="0.15"/>')
        out.append(f'<text x="{x(f["start"]) + 2:.1f}" y="{bottom + 14}" fill="#555">'
                   f'{html.escape(f["kind"])}</text>')

    def axes(y, title, ymax, unit):
        out.append(f'<text x="{left}" y="{y - 6}" font-weight="bold">{html.escape(title)}</text>')
        out.append(f'<line x1="{left}" y1="{y + panel_h}" x2="{W - right}" y2="{y + panel_h}" stroke="#333"/>')
        out.append(f'<line x1="{left}" y1="{y}" x2="{left}" y2="{y + panel_h}" stroke="#333"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{ymax:g}{unit}</text>')
        out.append(f'<text x="{left - 6}" y="{y + panel_h}" text-anchor="end">0</text>')

    def poly(points, color, width=1.5, dash=""):
        if len(points) > 1:
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" '
                       f'stroke-width="{width}" {dash}/>')

    # Panel 1: admitted /limited per second, per node and in total, against the limit.
    load = ctx.cluster.read_load()
    per = {}
    for node, rows in load.items():
        for r in rows:
            if r["path"] == "/limited":
                b = r["t"] // 500 * 500
                per.setdefault(node, {}).setdefault(b, 0)
                per[node][b] += r["s2xx"] * 2  # per 500 ms -> per second
    total = {}
    for series in per.values():
        for b, v in series.items():
            total[b] = total.get(b, 0) + v
    limit_rate = cl.LIMIT * 1000 / cl.WINDOW_MS
    ymax = max([limit_rate * 2] + list(total.values()))
    y = top
    axes(y, "admitted /limited requests per second (dashed: the cluster-wide limit)", ymax, "/s")

    def yv(v, base, hmax):
        return base + panel_h - v / hmax * panel_h

    for i, node in enumerate(nodes):
        series = sorted(per.get(node, {}).items())
        poly([(x(b / 1000), yv(v, y, ymax)) for b, v in series], COLORS[i % len(COLORS)])
    poly([(x(b / 1000), yv(v, y, ymax)) for b, v in sorted(total.items())], "#000", 2)
    poly([(x(t0), yv(limit_rate, y, ymax)), (x(t1), yv(limit_rate, y, ymax))], "#000", 1,
         'stroke-dasharray="5,4"')

    # Panel 2: members alive as each node sees them.
    y = top + panel_h + gap
    n_all = len(nodes)
    axes(y, "members alive, as each node sees them", n_all, "")
    for i, node in enumerate(nodes):
        pts = []
        for s in ctx.samples:
            if s["node"] == node:
                v = s["alive"] if s["alive"] is not None else 0
                pts.append((x(s["t"]), yv(v, y, n_all) + i * 2))
        poly(pts, COLORS[i % len(COLORS)])

    # Panel 3: breaker state of each flaky target, one row per (node, target).
    y = top + 2 * (panel_h + gap)
    out.append(f'<text x="{left}" y="{y - 6}" font-weight="bold">breaker state of upstream '
               f'"flaky" per node and target (green closed, orange half-open, red open, '
               f'grey no answer)</text>')
    targets = sorted({f"{h.ip}:9000" for h in ctx.topo.hosts})
    row = 0
    for node in nodes:
        samples = [s for s in ctx.samples if s["node"] == node]
        for target in targets:
            ry = y + row * 18
            out.append(f'<text x="{left - 6}" y="{ry + 12}" text-anchor="end" font-size="9">'
                       f'{html.escape(node)}&#8594;{html.escape(target.split(":")[0])}</text>')
            for a, b in zip(samples, samples[1:] + [None]):
                end = b["t"] if b else a["t"] + 0.5
                state = a["breakers"].get(target, "closed") if a["alive"] is not None else None
                color = BREAKER_COLORS.get(state, "#ccc")
                out.append(f'<rect x="{x(a["t"]):.1f}" y="{ry}" width="{max(0.5, x(end) - x(a["t"])):.1f}" '
                           f'height="15" fill="{color}"/>')
            row += 1
    # Legend and time axis.
    ly = bottom + 32
    for i, node in enumerate(nodes):
        out.append(f'<rect x="{left + i * 140}" y="{ly - 9}" width="12" height="4" '
                   f'fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{left + i * 140 + 16}" y="{ly - 4}">{html.escape(node)}</text>')
    out.append(f'<text x="{left + len(nodes) * 140 + 16}" y="{ly - 4}">black: total; '
               f'x axis: seconds since load start</text>')
    for s in range(0, int(t1 - t0) + 1, 5):
        out.append(f'<text x="{x(t0 + s):.1f}" y="{bottom + 26}" text-anchor="middle" '
                   f'fill="#333">{s - 2}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
