"""The dashboard's drawing rules: DAG layering, timeline bars, throughput buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from web.graphics import (
    LAYER_GAP,
    NODE_WIDTH,
    layers,
    layout_dag,
    layout_versions,
    throughput_chart,
    timeline,
)

DIAMOND = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def test_a_step_sits_one_layer_right_of_its_deepest_parent():
    assert layers({"a": [], "b": ["a"], "c": ["a", "b"], "d": []}) == {"a": 0, "b": 1, "c": 2, "d": 0}


def test_layers_refuse_a_cycle():
    with pytest.raises(ValueError, match="cycle"):
        layers({"a": ["b"], "b": ["a"]})


def test_diamond_layout_places_layers_left_to_right_without_overlap():
    layout = layout_dag(DIAMOND)
    nodes = {n.name: n for n in layout.nodes}
    assert nodes["a"].x < nodes["b"].x == nodes["c"].x < nodes["d"].x
    assert nodes["b"].x - nodes["a"].x == NODE_WIDTH + LAYER_GAP
    assert abs(nodes["b"].y - nodes["c"].y) >= nodes["b"].height
    assert {(e.source, e.target) for e in layout.edges} == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    for node in layout.nodes:
        assert 0 <= node.x and node.x + node.width <= layout.width
        assert 0 <= node.y and node.y + node.height <= layout.height


def test_long_edges_bend_through_waypoints_in_the_layers_they_cross():
    layout = layout_dag({"a": [], "b": ["a"], "c": ["b"], "d": ["a", "c"]})
    long = next(e for e in layout.edges if (e.source, e.target) == ("a", "d"))
    assert long.path.count("C") == 3  # one curve per layer gap crossed
    assert [n.name for n in layout.nodes].count("d") == 1
    assert not any(n.name.startswith("\0") for n in layout.nodes)


def test_ordering_removes_an_avoidable_crossing():
    # Defined in an order that crosses: x1->y2 and x2->y1.
    layout = layout_dag({"x1": [], "x2": [], "y2": ["x1"], "y1": ["x2"]})
    y = {n.name: n.y for n in layout.nodes}
    assert (y["x1"] < y["x2"]) == (y["y2"] < y["y1"])


def test_long_names_are_shortened_on_the_box_only():
    name = "a_really_long_step_name_that_goes_on"
    node = layout_dag({name: []}).nodes[0]
    assert node.name == name and len(node.label) == 20 and node.label.endswith("…")


def test_timeline_shares_one_axis_and_keeps_empty_rows():
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    attempts = [
        ("a", 1, "succeeded", t0, t0 + timedelta(seconds=1)),
        ("b", 1, "failed", t0 + timedelta(seconds=1), t0 + timedelta(seconds=2)),
        ("b", 2, "running", t0 + timedelta(seconds=3), None),
    ]
    t = timeline(attempts, now=t0 + timedelta(seconds=4), steps=["a", "b", "c"])
    assert [name for name, _y in t.rows] == ["a", "b", "c"]
    bars = {(b.step, b.number): b for b in t.bars}
    assert bars[("a", 1)].x < bars[("b", 1)].x < bars[("b", 2)].x
    assert bars[("a", 1)].width == pytest.approx(bars[("b", 1)].width)
    assert bars[("b", 2)].x + bars[("b", 2)].width == pytest.approx(t.width)  # runs until now
    assert bars[("b", 1)].y == bars[("b", 2)].y != bars[("a", 1)].y
    assert t.ticks[-1][1] == "4.0s"


def test_timeline_without_attempts_has_rows_and_no_bars():
    t = timeline([], now=datetime.now(UTC), steps=["a"])
    assert t.bars == () and t.rows[0][0] == "a"


def test_throughput_buckets_runs_by_hour_and_draws_the_failure_rate():
    end = datetime(2024, 1, 2, 10, 30, tzinfo=UTC)
    hour = datetime(2024, 1, 2, 9, tzinfo=UTC)
    counts = [
        (hour, "succeeded", 3),
        (hour, "failed", 1),
        (hour + timedelta(hours=1), "running", 2),
        (hour - timedelta(days=3), "failed", 99),  # outside the window: ignored
    ]
    chart = throughput_chart(counts, end)
    assert chart.peak == 4
    kinds = sorted((b.kind, b.title) for b in chart.bars)
    assert kinds == [("failed", "09:00 UTC: 1 failed"), ("other", "10:00 UTC: 2 other"),
                     ("succeeded", "09:00 UTC: 3 succeeded")]
    assert len(chart.failure_line.split()) == 1  # only hours with finished runs have a rate
    tallest = max(chart.bars, key=lambda b: b.height)
    assert tallest.kind == "succeeded"


# -- a run's version against the current one ------------------------------------------------


def kinds(layout) -> tuple[dict[str, str], dict[tuple[str, str], str]]:  # noqa: ANN001
    return ({n.name: n.kind for n in layout.nodes},
            {(e.source, e.target): e.kind for e in layout.edges})


def test_a_step_inserted_mid_dag_is_a_ghost_between_its_neighbours_and_moves_an_edge():
    layout = layout_versions({"first": [], "last": ["first"]},
                             {"first": [], "mid": ["first"], "last": ["mid"]})
    nodes, edges = kinds(layout)
    assert nodes == {"first": "", "mid": "added", "last": "changed"}
    assert edges == {("first", "last"): "dropped", ("first", "mid"): "added", ("mid", "last"): "added"}
    x = {n.name: n.x for n in layout.nodes}
    assert x["first"] < x["mid"] < x["last"]


def test_a_renamed_step_is_the_removed_one_beside_the_added_ghost():
    nodes, edges = kinds(layout_versions({"first": [], "last": ["first"]}, {"first": [], "final": ["first"]}))
    assert nodes == {"first": "", "last": "removed", "final": "added"}
    assert edges == {("first", "last"): "", ("first", "final"): "added"}


def test_the_same_structure_marks_nothing():
    nodes, edges = kinds(layout_versions(DIAMOND, DIAMOND))
    assert set(nodes.values()) == {""} and set(edges.values()) == {""}


def test_a_dependency_turned_around_is_still_drawn_from_the_runs_version():
    nodes, edges = kinds(layout_versions({"a": [], "b": ["a"]}, {"b": [], "a": ["b"]}))
    assert nodes == {"a": "changed", "b": "changed"}
    assert edges == {("a", "b"): "dropped"}  # the union has a cycle: the run's edges only


# -- composed nodes --------------------------------------------------------------------------

COMPOSED = {"square": {"name": "square", "kind": "map"},
            "report": {"name": "report", "kind": "call", "call": {"workflow": "sales-report"}}}


def test_a_map_note_counts_done_items_and_splits_its_bar_by_outcome():
    from orchestrator.db.composed import map_summary
    from web.graphics import PROGRESS_WIDTH, node_notes

    counts = map_summary({"succeeded": 35, "failed": 1, "cancelled": 1, "running": 3, "pending": 60})
    assert counts["total"] == 100 and counts["done"] == 37 and counts["queued"] == 0
    note = node_notes(COMPOSED, {"square": counts})["square"]
    assert (note.kind, note.text, note.bar) == ("map", "map 37/100 · 2 failed", True)
    assert note.done_width == pytest.approx(PROGRESS_WIDTH * 0.35)
    assert note.failed_width == pytest.approx(PROGRESS_WIDTH * 0.02)


def test_a_definition_labels_maps_and_calls_and_an_empty_map_draws_no_bar():
    from orchestrator.db.composed import map_summary
    from web.graphics import node_notes

    notes = node_notes(COMPOSED)
    assert (notes["square"].text, notes["square"].bar) == ("map", False)
    assert notes["report"].text == "call → sales-report" and notes["report"].kind == "call"
    empty = node_notes(COMPOSED, {"square": map_summary({})})["square"]
    assert (empty.text, empty.done_width, empty.failed_width) == ("map 0/0", 0.0, 0.0)
