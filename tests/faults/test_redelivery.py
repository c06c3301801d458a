"""The recovery loop re-sends the message of a step queued too long, at growing intervals.

A lost message (a broker restarted without persistence, a crash between commit and send) is
sent again after ORCHESTRATOR_REDELIVER_AFTER; a step that is merely waiting in a long queue
must not get a copy every ORCHESTRATOR_REDELIVER_AFTER, or a backlog floods its own queue
(the Redis restart soak once re-sent 33,797 messages for 6,000 steps).
"""

from __future__ import annotations

import time

from orchestrator.dispatch import RecordingDispatcher
from orchestrator.engine import WorkflowEngine
from orchestrator.recovery import sweep


def test_a_step_waiting_in_a_long_queue_gets_copies_at_growing_intervals(runtime, settings):
    fast = settings.with_(redeliver_after=0.2)
    dispatcher = RecordingDispatcher()
    engine = WorkflowEngine(runtime.sessions, runtime.registry, dispatcher, fast)
    run_id = engine.start_run("chain", {"id": "waiting"})  # no worker: the message just waits
    began = time.monotonic()
    while time.monotonic() - began < 3.3:
        sweep(engine)
        time.sleep(0.02)
    sent = [d for d in dispatcher.sent if d.run_id == run_id and d.step == "first"]
    # The first message, then copies after about 0.2, 0.4, 0.8 and 1.6 s of waiting (and
    # perhaps 3.2 s), where a fixed interval would have sent about sixteen. A loaded machine
    # sweeps less often, so it may send fewer copies; never more.
    assert 2 <= len(sent) - 1 <= 5, [round(time.monotonic() - began, 2), len(sent)]
    assert len({d.task_id for d in sent}) == len(sent)
