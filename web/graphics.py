"""Geometry for the dashboard's SVG drawings: DAG layout, attempt timeline, throughput chart.

Pure functions of plain data (no Flask, no database), so the drawing rules are unit
tested on their own; the templates only turn these shapes into SVG elements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

# -- DAG: a layered (Sugiyama-style) left-to-right layout ------------------------------

#: Size of a step box and the gaps between boxes, in SVG user units.
NODE_WIDTH = 150
NODE_HEIGHT = 34
LAYER_GAP = 56
ROW_GAP = 18
MARGIN = 8
#: Down-and-up ordering sweeps; small DAGs settle in two or three.
ORDER_SWEEPS = 4


@dataclass(frozen=True)
class DagNode:
    name: str
    x: float
    y: float
    width: float = NODE_WIDTH
    height: float = NODE_HEIGHT
    #: How the current version differs here (see `layout_versions`); "" when it does not.
    kind: str = ""

    @property
    def label(self) -> str:
        """The name, shortened to fit the box."""
        return self.name if len(self.name) <= 20 else self.name[:19] + "…"


@dataclass(frozen=True)
class DagEdge:
    source: str
    target: str
    path: str  # SVG path data
    #: "added" or "dropped" by the current version (see `layout_versions`); "" otherwise.
    kind: str = ""


@dataclass(frozen=True)
class DagLayout:
    width: float
    height: float
    nodes: tuple[DagNode, ...]
    edges: tuple[DagEdge, ...]


def layers(deps: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Longest-path layering: a step sits one layer right of its deepest parent."""
    layer: dict[str, int] = {}

    def depth(name: str, trail: frozenset[str]) -> int:
        if name in layer:
            return layer[name]
        if name in trail:
            raise ValueError(f"cycle through {name!r}")
        parents = [p for p in deps.get(name, ()) if p in deps]
        layer[name] = 1 + max((depth(p, trail | {name}) for p in parents), default=-1)
        return layer[name]

    for name in deps:
        depth(name, frozenset())
    return layer


def layout_dag(deps: Mapping[str, Sequence[str]]) -> DagLayout:
    """Place each step in its layer and order layers to reduce crossings.

    Edges spanning several layers get invisible waypoints in the layers they cross, so
    they bend around boxes instead of running through them.
    """
    layer = layers(deps)
    columns: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
    for name in deps:  # definition order is the first guess
        columns[layer[name]].append(name)
    # Split long edges into chains through waypoints named "\0source\0target\0k".
    chains: list[tuple[str, str, list[str]]] = []
    up: dict[str, list[str]] = {name: [] for name in deps}
    down: dict[str, list[str]] = {name: [] for name in deps}
    for target, parents in deps.items():
        for source in parents:
            if source not in deps:
                continue
            chain = [source]
            for k in range(layer[source] + 1, layer[target]):
                point = f"\0{source}\0{target}\0{k}"
                columns[k].append(point)
                up[point], down[point] = [], []
                chain.append(point)
            chain.append(target)
            for a, b in zip(chain, chain[1:], strict=False):
                down[a].append(b)
                up[b].append(a)
            chains.append((source, target, chain))
    for sweep in range(ORDER_SWEEPS):
        forward = sweep % 2 == 0
        indices = range(1, len(columns)) if forward else range(len(columns) - 2, -1, -1)
        for i in indices:
            neighbour = columns[i - 1] if forward else columns[i + 1]
            where = {name: pos for pos, name in enumerate(neighbour)}
            links = up if forward else down
            current = {name: pos for pos, name in enumerate(columns[i])}

            def barycentre(name: str, links=links, where=where, current=current) -> float:
                linked = [where[n] for n in links[name] if n in where]
                return sum(linked) / len(linked) if linked else float(current[name])

            columns[i].sort(key=lambda n, b=barycentre, c=current: (b(n), c[n]))
    tallest = max((len(c) for c in columns), default=0)
    height = 2 * MARGIN + tallest * NODE_HEIGHT + max(tallest - 1, 0) * ROW_GAP
    centre: dict[str, tuple[float, float]] = {}
    nodes: list[DagNode] = []
    for i, column in enumerate(columns):
        x = MARGIN + i * (NODE_WIDTH + LAYER_GAP)
        span = len(column) * NODE_HEIGHT + max(len(column) - 1, 0) * ROW_GAP
        top = (height - span) / 2
        for pos, name in enumerate(column):
            y = top + pos * (NODE_HEIGHT + ROW_GAP)
            centre[name] = (x, y + NODE_HEIGHT / 2)
            if not name.startswith("\0"):
                nodes.append(DagNode(name, x, y))
    edges = tuple(
        DagEdge(source, target, _edge_path([centre[p] for p in chain]))
        for source, target, chain in chains
    )
    width = 2 * MARGIN + len(columns) * NODE_WIDTH + max(len(columns) - 1, 0) * LAYER_GAP
    return DagLayout(width, height, tuple(nodes), edges)


#: Node kinds of `layout_versions`: a step the current version no longer has, one it adds
#: (drawn as a ghost), and one whose dependencies it changes.
REMOVED, ADDED, CHANGED = "removed", "added", "changed"
#: Edge kind of a dependency the current version drops between steps it keeps.
DROPPED = "dropped"


def layout_versions(drawn: Mapping[str, Sequence[str]], current: Mapping[str, Sequence[str]]) -> DagLayout:
    """The DAG `drawn` (a run's version) with what `current` (the loaded version) changes
    drawn on it: steps `current` lacks are `removed`, steps only `current` has are `added`
    ghosts placed where `current` puts them, steps whose parents differ are `changed`, and
    dependencies are `added` or `dropped` by `current`.

    Laid out on the union of both graphs, so ghosts and moved edges find room; if the
    union has a cycle (a dependency turned around), the changed edges among kept steps
    are left out of the drawing and their steps are still marked `changed`.
    """
    union: dict[str, list[str]] = {name: list(parents) for name, parents in drawn.items()}
    for name, parents in current.items():
        union.setdefault(name, [])
        union[name] += [p for p in parents if p not in union[name]]
    try:
        layout = layout_dag(union)
    except ValueError:
        safe = {name: list(parents) for name, parents in drawn.items()}
        safe.update({name: list(parents) for name, parents in current.items() if name not in drawn})
        layout = layout_dag(safe)

    def node_kind(name: str) -> str:
        if name not in current:
            return REMOVED
        if name not in drawn:
            return ADDED
        return CHANGED if list(drawn[name]) != list(current[name]) else ""

    def edge_kind(source: str, target: str) -> str:
        was = target in drawn and source in drawn[target]
        now = target in current and source in current[target]
        if now and not was:
            return ADDED
        if was and not now and source in current and target in current:
            return DROPPED
        return ""

    return replace(
        layout,
        nodes=tuple(replace(n, kind=node_kind(n.name)) for n in layout.nodes),
        edges=tuple(replace(e, kind=edge_kind(e.source, e.target)) for e in layout.edges),
    )


def _edge_path(points: list[tuple[float, float]]) -> str:
    """Smooth curve from the right side of the first box to the left side of the last."""
    x0, y0 = points[0]
    start_x = x0 + NODE_WIDTH
    path = f"M{start_x:.1f},{y0:.1f}"
    prev_x, prev_y = start_x, y0
    for i, (x, y) in enumerate(points[1:], start=1):
        last = i == len(points) - 1
        mid = (prev_x + x) / 2
        path += f" C{mid:.1f},{prev_y:.1f} {mid:.1f},{y:.1f} {x:.1f},{y:.1f}"
        if not last:  # through a waypoint: continue across its (invisible) width
            path += f" L{x + NODE_WIDTH:.1f},{y:.1f}"
            prev_x, prev_y = x + NODE_WIDTH, y
    return path


# -- composed nodes: what a map or call box says beside its name ------------------------

#: Width of a map's progress bar inside its box (the box's width less its padding).
PROGRESS_WIDTH = NODE_WIDTH - 20


@dataclass(frozen=True)
class NodeNote:
    """The second line of a map's or call's box: its kind, a map's progress and the
    geometry of its progress bar (succeeded, then failed or cancelled, out of the width)."""

    kind: str
    text: str
    done_width: float = 0.0
    failed_width: float = 0.0
    title: str = ""
    #: Whether to draw the progress bar (a map whose item counts are known).
    bar: bool = False


def node_notes(
    composed: Mapping[str, Mapping[str, object]],
    progress: Mapping[str, Mapping[str, int] | None] | None = None,
) -> dict[str, NodeNote]:
    """The notes of the map and call nodes of a structure (name -> its structure entry):
    `map` (with `37/100` and a bar when `progress` gives its item counts) or `call → w`."""
    notes: dict[str, NodeNote] = {}
    for name, step in composed.items():
        if step.get("kind") == "call":
            called = step.get("call")
            workflow = called.get("workflow") if isinstance(called, Mapping) else None
            text = f"call → {workflow}" if workflow else "call"
            notes[name] = NodeNote("call", text if len(text) <= 24 else text[:23] + "…",
                                   title=f"starts a run of {workflow} and waits for it")
            continue
        counts = (progress or {}).get(name)
        if counts is None:
            notes[name] = NodeNote("map", "map", title="one step instance per item of its list")
            continue
        total, done = counts.get("total", 0), counts.get("done", 0)
        failed = counts.get("failed", 0) + counts.get("cancelled", 0)
        ok = counts.get("succeeded", 0)
        scale = PROGRESS_WIDTH / total if total else 0.0
        title = f"{done} of {total} items done: {ok} succeeded, {failed} failed or cancelled"
        notes[name] = NodeNote("map", f"map {done}/{total}" + (f" · {failed} failed" if failed else ""),
                               ok * scale, failed * scale, title, bar=True)
    return notes


# -- timeline: one row per step, one bar per attempt -----------------------------------

TIMELINE_LABEL = 150
TIMELINE_ROW = 22
TIMELINE_WIDTH = 640


@dataclass(frozen=True)
class Bar:
    step: str
    number: int
    status: str
    x: float
    y: float
    width: float
    title: str


@dataclass(frozen=True)
class Timeline:
    width: float
    height: float
    rows: tuple[tuple[str, float], ...]  # (step name, y of its label baseline)
    bars: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]  # (x, label)


def timeline(
    attempts: Sequence[tuple[str, int, str, datetime, datetime | None]], now: datetime,
    steps: Sequence[str] = (),
) -> Timeline:
    """Lay out attempts `(step, number, status, started, finished)` on a shared time axis.

    An attempt still running ends at `now`. Rows follow `steps` (then any other step in
    order of appearance); a step without attempts keeps an empty row.
    """
    order = list(dict.fromkeys([*steps, *(a[0] for a in attempts)]))
    row_of = {name: i for i, name in enumerate(order)}
    height = len(order) * TIMELINE_ROW + 24
    if not attempts:
        rows = tuple((name, i * TIMELINE_ROW + 15.0) for i, name in enumerate(order))
        return Timeline(TIMELINE_LABEL + TIMELINE_WIDTH, height, rows, (), ())
    begin = min(a[3] for a in attempts)
    end = max((a[4] or now) for a in attempts)
    span = max((end - begin).total_seconds(), 0.001)
    scale = TIMELINE_WIDTH / span
    bars = []
    for step, number, status, started, finished in attempts:
        x = TIMELINE_LABEL + (started - begin).total_seconds() * scale
        width = max(((finished or now) - started).total_seconds() * scale, 2.0)
        seconds = ((finished or now) - started).total_seconds()
        title = f"{step} attempt {number}: {status}, {seconds:.3f}s"
        bars.append(Bar(step, number, status, x, row_of[step] * TIMELINE_ROW + 4, width, title))
    ticks = tuple(
        (TIMELINE_LABEL + TIMELINE_WIDTH * k / 4, _duration(span * k / 4)) for k in range(5)
    )
    rows = tuple((name, i * TIMELINE_ROW + 15.0) for i, name in enumerate(order))
    return Timeline(TIMELINE_LABEL + TIMELINE_WIDTH, height, rows, tuple(bars), ticks)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


# -- throughput: runs per hour (stacked by outcome) and failure rate ---------------------

CHART_WIDTH = 720
CHART_HEIGHT = 160
CHART_LEFT = 36
CHART_BOTTOM = 20


@dataclass(frozen=True)
class ChartBar:
    x: float
    y: float
    width: float
    height: float
    kind: str  # succeeded | failed | other
    title: str


@dataclass(frozen=True)
class Chart:
    width: float
    height: float
    bars: tuple[ChartBar, ...]
    failure_line: str  # SVG polyline points, failure rate of finished runs per hour
    peak: int
    labels: tuple[tuple[float, str], ...]


def throughput_chart(
    counts: Sequence[tuple[datetime, str, int]], end: datetime, hours: int = 24
) -> Chart:
    """Hourly bars of runs created (succeeded / failed / other) over the last `hours`."""
    last = end.replace(minute=0, second=0, microsecond=0)
    slots = [last - timedelta(hours=hours - 1 - i) for i in range(hours)]
    index = {slot: i for i, slot in enumerate(slots)}
    tallies = [{"succeeded": 0, "failed": 0, "other": 0} for _ in slots]
    for hour, status, count in counts:
        i = index.get(hour.replace(minute=0, second=0, microsecond=0))
        if i is None:
            continue
        kind = status if status in ("succeeded", "failed") else "other"
        tallies[i][kind] += count
    peak = max((sum(t.values()) for t in tallies), default=0)
    plot_w = CHART_WIDTH - CHART_LEFT
    plot_h = CHART_HEIGHT - CHART_BOTTOM
    slot_w = plot_w / hours
    bars: list[ChartBar] = []
    points: list[str] = []
    for i, (slot, tally) in enumerate(zip(slots, tallies, strict=True)):
        x = CHART_LEFT + i * slot_w
        base = float(plot_h)
        for kind in ("succeeded", "failed", "other"):
            n = tally[kind]
            if n and peak:
                h = n / peak * (plot_h - 4)
                base -= h
                title = f"{slot:%H:00} UTC: {n} {kind}"
                bars.append(ChartBar(x + 1, base, slot_w - 2, h, kind, title))
        finished = tally["succeeded"] + tally["failed"]
        if finished:
            rate = tally["failed"] / finished
            points.append(f"{x + slot_w / 2:.1f},{plot_h - rate * (plot_h - 4):.1f}")
    labels = tuple(
        (CHART_LEFT + i * slot_w, f"{slots[i]:%H:00}") for i in range(0, hours, max(hours // 6, 1))
    )
    return Chart(CHART_WIDTH, CHART_HEIGHT, tuple(bars), " ".join(points), peak, labels)
