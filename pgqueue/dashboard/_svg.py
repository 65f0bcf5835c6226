"""Geometry of the dashboard's server-drawn SVG: the throughput chart and workflow graphs.

Only numbers and the rows' own fields come out of here; the templates turn them into
SVG elements, so every text goes through the templates' escaping.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

FINISHED = ("completed", "discarded", "cancelled")


def throughput_chart(rows: list[dict], *, width: int = 720, height: int = 160,
                     minutes: int = 60) -> dict:
    """Stacked bars of jobs finished per minute (oldest minute on the left).

    :param rows: ``overview_throughput`` rows (minutes_ago, queue, state, jobs).
    :returns: bars (x, y, w, h, state, minute, jobs), the peak and the axis labels.
    """
    per_minute: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FINISHED, 0))
    for r in rows:
        if 0 <= r["minutes_ago"] < minutes and r["state"] in FINISHED:
            per_minute[r["minutes_ago"]][r["state"]] += r["jobs"]
    peak = max((sum(v.values()) for v in per_minute.values()), default=0)
    left, bottom, top = 40, 20, 8
    plot_h = height - bottom - top
    slot = (width - left) / minutes
    bars = []
    for ago, counts in per_minute.items():
        x = left + (minutes - 1 - ago) * slot
        y = height - bottom
        for state in FINISHED:
            n = counts[state]
            if not n:
                continue
            h = max(plot_h * n / peak, 1.0)
            y -= h
            bars.append({"x": round(x + 0.5, 1), "y": round(y, 1),
                         "w": round(max(slot - 1, 1), 1), "h": round(h, 1),
                         "state": state, "minutes_ago": ago, "jobs": n})
    return {"width": width, "height": height, "left": left, "bottom": height - bottom,
            "top": top, "peak": peak, "bars": bars,
            "total": sum(sum(v.values()) for v in per_minute.values()),
            "ticks": [{"x": round(left + (minutes - 1 - m) * slot + slot / 2, 1),
                       "label": f"-{m}m", "anchor": "middle"} for m in (59, 45, 30, 15)]
            + [{"x": width - 2, "label": "now", "anchor": "end"}]}


@dataclass
class Graph:
    width: int
    height: int
    nodes: list[dict] = field(default_factory=list)
    edges: list[dict] = field(default_factory=list)


def workflow_graph(steps: list[dict], *, node_w: int = 170, node_h: int = 40,
                   gap_x: int = 50, gap_y: int = 16) -> Graph:
    """Lay a workflow out in columns: each step one column right of its deepest dependency.

    :param steps: ``workflow_steps`` rows (job_id, step, task, state, depends_on, ...).
    :returns: nodes with their box, edges as cubic curves between box sides.
    """
    by_id = {s["job_id"]: s for s in steps}
    deps = {i: [d for d in s["depends_on"] if d in by_id] for i, s in by_id.items()}
    dependents: dict[int, list[int]] = defaultdict(list)
    for i, ds in deps.items():
        for d in ds:
            dependents[d].append(i)
    # Kahn's order: a step's column is one more than its deepest dependency's
    waiting = {i: len(ds) for i, ds in deps.items()}
    level = {i: 0 for i, n in waiting.items() if n == 0}
    ready = list(level)
    while ready:
        i = ready.pop()
        for j in dependents[i]:
            level[j] = max(level.get(j, 0), level[i] + 1)
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)

    columns: dict[int, list[dict]] = defaultdict(list)
    for s in steps:
        columns[level.get(s["job_id"], 0)].append(s)
    pos: dict[int, tuple[float, float]] = {}
    graph = Graph(width=0, height=0)
    for col, members in sorted(columns.items()):
        for row, s in enumerate(members):
            x = 10 + col * (node_w + gap_x)
            y = 10 + row * (node_h + gap_y)
            pos[s["job_id"]] = (x, y)
            label = s["step"] or s["task"].rsplit(".", 1)[-1]
            graph.nodes.append({"x": x, "y": y, "w": node_w, "h": node_h,
                                "job_id": s["job_id"], "state": s["state"],
                                "label": label if len(label) <= 22 else label[:21] + "…",
                                "title": f"job {s['job_id']} {s['task']}: {s['state']}",
                                "error_callback": s.get("is_error_callback", False)})
    for s in steps:
        x2, y2 = pos[s["job_id"]]
        for d in s["depends_on"]:
            if d not in pos:
                continue
            x1, y1 = pos[d]
            sx, sy = x1 + node_w, y1 + node_h / 2
            ex, ey = x2, y2 + node_h / 2
            mx = (sx + ex) / 2
            graph.edges.append({"d": f"M{sx},{sy} C{mx},{sy} {mx},{ey} {ex},{ey}",
                                "done": by_id[d]["state"] in FINISHED})
    graph.width = int(max((n["x"] + node_w for n in graph.nodes), default=0) + 10)
    graph.height = int(max((n["y"] + node_h for n in graph.nodes), default=0) + 10)
    return graph
