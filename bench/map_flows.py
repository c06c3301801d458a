"""Workflows of the map benchmark (bench/maps.py), loaded by its worker processes as
ORCHESTRATOR_WORKFLOWS=bench.map_flows.

With BENCH_PROFILE_DIR set, each worker pool process profiles itself with cProfile from
its start and writes `<dir>/worker-<pid>.prof` every PROFILE_EVERY tasks (a pool child is
killed at shutdown, so a dump at exit could be lost): the benchmark's profiling hook, kept
here so that nothing of it reaches the orchestrator's own code.
"""

from __future__ import annotations

import os

from orchestrator import StepContext, Workflow

#: Items each worker process runs between two writes of its profile.
PROFILE_EVERY = 500

fanout = Workflow("bench-map", description="One map of no-op items over range(n).")


@fanout.map(over=lambda ctx: list(range(ctx.input["n"])))
def noop(ctx: StepContext) -> None:
    return None


limited = Workflow("bench-map-limited", description="The same map, at most 20 items at once.")


@limited.map(name="noop", over=lambda ctx: list(range(ctx.input["n"])), concurrency=20)
def noop_limited(ctx: StepContext) -> None:
    return None


def _profile_workers(directory: str) -> None:
    import cProfile

    from celery.signals import task_postrun, worker_process_init

    state: dict[str, object] = {}

    @worker_process_init.connect(weak=False)
    def _start(**_: object) -> None:
        profiler = cProfile.Profile()
        state.update(profiler=profiler, done=0)
        profiler.enable()

    @task_postrun.connect(weak=False)
    def _count(**_: object) -> None:
        profiler = state.get("profiler")
        if profiler is None:
            return
        state["done"] = int(state["done"]) + 1  # type: ignore[call-overload]
        if state["done"] % PROFILE_EVERY == 0:  # type: ignore[operator]
            profiler.dump_stats(os.path.join(directory, f"worker-{os.getpid()}.prof"))  # type: ignore[attr-defined]


if os.environ.get("BENCH_PROFILE_DIR"):
    _profile_workers(os.environ["BENCH_PROFILE_DIR"])
