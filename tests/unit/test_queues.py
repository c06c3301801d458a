"""Queue coverage: which queues the workflows need, and how the workers' answer is read."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from orchestrator import Workflow
from orchestrator.celery_app import create_celery_app
from orchestrator.queues import (
    QueueWatch,
    ask_workers,
    needed_queues,
    queue_report,
    queues_of,
    served_by,
)
from orchestrator.settings import Settings

NOW = datetime(2026, 5, 1, tzinfo=UTC)


def workflows() -> list[Workflow]:
    plain = Workflow("plain")
    plain.step(lambda ctx: 1, name="first")
    plain.step(lambda ctx: 2, name="pay", after="first", queue="payments")
    ledger = Workflow("ledger", partition_by="account", shards=2)
    ledger.step(lambda ctx: 3, name="post")
    ledger.step(lambda ctx: 4, name="notify", after="post", queue="mail")
    return [plain, ledger]


def test_each_step_needs_its_own_queue_its_shards_or_the_default():
    assert needed_queues(workflows()) == {
        "ledger.shard-0": ["ledger.post"],
        "ledger.shard-1": ["ledger.post"],
        "mail": ["ledger.notify"],
        "orchestrator": ["plain.first"],
        "payments": ["plain.pay"],
    }


def test_active_queues_replies_become_the_workers_of_each_queue():
    replies = {
        "w1@a": [{"name": "orchestrator", "exchange": {}}, {"name": "payments"}],
        "w2@b": [{"name": "orchestrator"}],
        "w3@c": None,
    }
    workers = queues_of(replies)
    assert workers == {"w1@a": ["orchestrator", "payments"], "w2@b": ["orchestrator"], "w3@c": []}
    assert served_by(workers) == {"orchestrator": ["w1@a", "w2@b"], "payments": ["w1@a"]}
    assert queues_of(None) == {}


def test_a_queue_without_a_live_worker_is_unserved():
    report = queue_report(needed_queues(workflows()), {"orchestrator": ["w1@a"], "payments": ["w1@a"]}, NOW)
    assert report.status == "unserved"
    assert [q.name for q in report.unserved] == ["ledger.shard-0", "ledger.shard-1", "mail"]
    assert report.workers == ("w1@a",)
    data = report.as_dict()
    assert data["queues"][3] == {"name": "orchestrator", "steps": ["plain.first"], "workers": ["w1@a"], "served": True}


def test_every_queue_served_is_ok_and_no_answer_at_all_is_unknown_not_unserved():
    needed = {"orchestrator": ["plain.first"]}
    assert queue_report(needed, {"orchestrator": ["w1@a"]}, NOW).status == "ok"
    unknown = queue_report(needed, None, NOW, error="the broker did not answer")
    assert unknown.status == "unknown" and unknown.unserved == ()


def test_a_broker_without_broadcasts_gives_an_unknown_report(tmp_path):
    app = create_celery_app(Settings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"))
    report = QueueWatch(workflows, lambda: ask_workers(app)).report()
    assert report.status == "unknown" and "cannot broadcast to workers" in (report.error or "")
    assert report.unserved == ()


class Answers:
    """Workers' answers to successive broadcasts, on a clock the test moves."""

    def __init__(self, *answers: dict[str, list[str]]) -> None:
        self.answers = list(answers)
        self.asked = 0
        self.now = 100.0

    def __call__(self) -> dict[str, list[str]]:
        self.asked += 1
        return self.answers.pop(0)


def test_an_answer_is_reused_for_ttl_seconds():
    answers = Answers({"w1@a": ["orchestrator"]}, {})
    watch = QueueWatch(workflows, answers, ttl=10.0, clock=lambda: answers.now)
    first = watch.report()
    answers.now += 9.0
    assert watch.report() is first and answers.asked == 1
    answers.now += 1.0
    assert watch.report() is not first and answers.asked == 2


def test_a_worker_missing_from_one_answer_counts_until_it_has_been_silent_for_forget_after():
    answers = Answers({"w1@a": ["orchestrator", "payments"]}, {}, {})
    watch = QueueWatch(workflows, answers, ttl=0.0, forget_after=30.0, clock=lambda: answers.now)
    assert watch.report().workers == ("w1@a",)
    answers.now += 20.0
    late = watch.report()  # w1 did not answer in time this once
    assert late.workers == ("w1@a",) and "payments" not in [q.name for q in late.unserved]
    answers.now += 11.0
    gone = watch.report()
    assert gone.workers == () and "payments" in [q.name for q in gone.unserved]


def test_pages_get_the_latest_report_at_once_while_a_check_runs_in_the_background():
    release = threading.Event()

    def slow_answer() -> dict[str, list[str]]:
        release.wait(10)
        return {"w1@a": ["orchestrator"]}

    watch = QueueWatch(workflows, slow_answer, ttl=60.0)
    assert watch.latest() is None  # nothing yet, and nobody waits for the broker
    release.set()
    report = watch.report()  # waits for the check already running rather than start another
    assert report.workers == ("w1@a",)
    assert watch.latest() is report
