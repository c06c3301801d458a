"""The scheduler against real PostgreSQL: exactly one run per tick with two scheduler
processes racing, catch-up after 10 minutes down for each policy (the pass is given its
`now`), a broken input function, and pause/resume through the CLI, the API and the
dashboard (tests/schedule_flows.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from orchestrator.recovery import fire_schedules
from orchestrator.scheduler import fire_due
from tests.fixtures.config import ROOT, settings_env
from tests.integration.test_cli import cli
from tests.integration.test_pages import csrf, login
from tests.webtools import AUTH, assert_documented, make_app


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=("tests.schedule_flows",))


@pytest.fixture
def env(runtime, settings, redis_url):
    return settings_env(settings, redis_url)


def minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def runs_of(runtime, workflow: str) -> list[tuple[str, dict]]:
    with runtime.db.connect() as conn:
        return [(r.dedupe_key, r.input) for r in conn.execute(
            text("SELECT dedupe_key, input FROM runs WHERE workflow = :w ORDER BY dedupe_key"), {"w": workflow})]


def row_of(runtime, workflow: str):  # noqa: ANN201 - a Row
    with runtime.db.connect() as conn:
        return conn.execute(text("SELECT * FROM schedules WHERE workflow = :w"), {"w": workflow}).one()


# -- exactly once ----------------------------------------------------------------------------------


def test_two_scheduler_processes_racing_over_3_ticks_start_exactly_one_run_per_tick(settings, runtime, redis_url):
    env = settings_env(settings.with_(workflows=("tests.schedule_race_flows",)), redis_url)
    racers = [
        subprocess.Popen([sys.executable, "-m", "tests.schedule_racer"], env=env, cwd=ROOT, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready", racer.stderr.read()
    start = time.time() + 0.2
    until = start + 3.3  # 3 ticks at least after the first pass
    reports = []
    for racer in racers:
        racer.stdin.write(f"{start} {until}\n")
        racer.stdin.flush()
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        assert racer.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["passes"] > 10 and r["errors"] == 0 for r in reports), reports
    keys = [key for key, _ in runs_of(runtime, "every-second")]
    assert len(keys) == len(set(keys)) >= 3, (keys, reports, row_of(runtime, "every-second"), start, until)
    # Every run was started by exactly one of them, and no tick in the window was missed.
    assert sorted(reports[0]["started"] + reports[1]["started"]) == sorted(_ids(runtime, "every-second"))
    ticks = [datetime.fromisoformat(k.split(":", 2)[2].replace("Z", "+00:00")) for k in sorted(keys)]
    assert ticks == [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
    assert row_of(runtime, "every-second").last_tick == ticks[-1]


def test_the_recovery_processes_of_two_workers_fire_a_schedule_once_per_tick_and_its_runs_run(
        settings, start_worker, wait_for_run, runtime):
    race = ("tests.schedule_race_flows",)
    start_worker(concurrency=1, workflows=race)
    start_worker(concurrency=1, workflows=race)

    def three_succeeded() -> bool:
        with runtime.db.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM runs WHERE workflow = 'every-second' "
                                     "AND status = 'succeeded'")).scalar_one() >= 3

    from tests.fixtures.waiting import wait_for

    wait_for(three_succeeded, timeout=30, message="3 scheduled runs to succeed")
    keys = [key for key, _ in runs_of(runtime, "every-second")]
    assert len(keys) == len(set(keys)) >= 3
    row = row_of(runtime, "every-second")
    assert row.last_error is None and row.last_run_id is not None


def _ids(runtime, workflow: str) -> list[str]:
    with runtime.db.connect() as conn:
        return [str(r[0]) for r in conn.execute(text("SELECT id FROM runs WHERE workflow = :w"), {"w": workflow})]


def test_the_recovery_process_pass_takes_the_sweeper_lock_and_skips_while_another_node_holds_it(runtime):
    with runtime.db.connect() as holder:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": 0x0_4F52_4348})
        assert fire_schedules(runtime.engine) == 0
        with runtime.db.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM schedules")).scalar_one() == 0
        holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": 0x0_4F52_4348})
        holder.commit()
    fire_schedules(runtime.engine)
    with runtime.db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schedules")).scalar_one() == 6


# -- catch-up after 10 minutes down -------------------------------------------------------------------


def test_catch_up_after_10_minutes_down_follows_each_policy(runtime):
    first = minute(datetime.now(UTC)) - timedelta(minutes=20)
    fire_due(runtime.engine, now=first + timedelta(seconds=30))  # first seen; nothing due yet
    back = first + timedelta(minutes=10, seconds=30)  # 10 ticks missed: first+1min .. first+10min
    result = fire_due(runtime.engine, now=back)
    missed = [first + timedelta(minutes=m) for m in range(1, 11)]

    def keys(workflow: str) -> list[str]:
        return [key.split(":", 2)[2] for key, _ in runs_of(runtime, workflow)]

    iso = [t.isoformat().replace("+00:00", "Z") for t in missed]
    assert keys("latest-catchup") == iso[-1:]
    assert keys("all-catchup") == iso
    assert [data for _, data in runs_of(runtime, "all-catchup")] == [{"minute": t.minute} for t in missed]
    assert keys("capped-catchup") == iso[-3:]
    assert "7 missed tick(s) older than the newest max_catchup were dropped" in row_of(runtime, "capped-catchup").last_error
    assert keys("no-catchup") == []
    assert row_of(runtime, "no-catchup").last_error is None  # skipping is what it was asked to do
    for workflow in ("latest-catchup", "all-catchup", "capped-catchup", "no-catchup"):
        row = row_of(runtime, workflow)
        assert row.last_tick == missed[-1] and row.next_fire_at == missed[-1] + timedelta(minutes=1)
    assert row_of(runtime, "all-catchup").last_run_id is not None
    assert len(result.started) == 1 + 10 + 3
    # A pass that started those runs but crashed before its row said so: the pass after
    # it plans the same ticks, and the runs' unique key starts none of them a second time.
    with runtime.db.begin() as conn:
        conn.execute(text("UPDATE schedules SET last_tick = NULL"))
    again = fire_due(runtime.engine, now=back)
    assert again.started == [] and again.duplicates == 1 + 10 + 3
    assert len(keys("all-catchup")) == 10
    # The next tick fires whatever the policy: it is on time.
    fire_due(runtime.engine, now=missed[-1] + timedelta(minutes=1, seconds=1))
    assert len(keys("no-catchup")) == 1 and len(keys("latest-catchup")) == 2


def test_a_schedule_first_seen_does_not_fire_the_ticks_from_before_it(runtime):
    seen = minute(datetime.now(UTC)) - timedelta(minutes=30, seconds=-20)
    fire_due(runtime.engine, now=seen)
    assert runs_of(runtime, "all-catchup") == []
    fire_due(runtime.engine, now=seen + timedelta(minutes=1))
    assert len(runs_of(runtime, "all-catchup")) == 1


def test_an_input_function_that_raises_records_the_tick_as_failed_and_the_others_go_on(runtime):
    first = minute(datetime.now(UTC)).replace(minute=0) - timedelta(hours=1)
    fire_due(runtime.engine, now=first + timedelta(seconds=10))
    result = fire_due(runtime.engine, now=first + timedelta(minutes=2, seconds=1))
    assert result.errors == 2 and runs_of(runtime, "broken-input") == []
    errors = {r.cron: r.last_error for r in _rows(runtime, "broken-input")}
    tick = first + timedelta(minutes=2)
    assert (f"tick {tick.isoformat()}: no run started: "
            f"ValueError: no region configured for {tick:%H:%M}") in errors["* * * * *"]
    assert "TypeError: the input function returned list, not a dict" in errors["*/2 * * * *"]
    assert len(runs_of(runtime, "latest-catchup")) == 1  # the other schedules went on
    shown = {s["cron"]: s for s in json.loads(cli(settings_env(runtime.settings), "schedules", "--json").stdout)
             if s["workflow"] == "broken-input"}
    assert shown["* * * * *"]["last_error"] == errors["* * * * *"]


def _rows(runtime, workflow: str) -> list:
    with runtime.db.connect() as conn:
        return conn.execute(text("SELECT * FROM schedules WHERE workflow = :w"), {"w": workflow}).all()


# -- pause and resume -----------------------------------------------------------------------------------


def test_pause_and_resume_from_the_cli_and_resuming_does_not_fire_the_ticks_missed_while_paused(env, runtime):
    fire_due(runtime.engine)
    out = cli(env, "schedules", "pause", "all-catchup")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "paused 1 schedule(s) of all-catchup: * * * * *"
    assert "  trigger schedule cron='* * * * *' timezone=UTC catchup=all" in cli(env, "workflows").stdout
    listed = cli(env, "schedules").stdout.splitlines()
    assert listed[0].split() == ["WORKFLOW", "CRON", "TIMEZONE", "NEXT", "FIRE", "(UTC)", "LAST", "RUN", "PAUSED"]
    line = next(x for x in listed if x.startswith("all-catchup "))
    assert line.split()[-1] == "yes" and " - " in line  # no next fire time while paused
    assert next(x for x in listed if x.startswith("latest-catchup ")).split()[-1] == "no"
    # Paused for 10 minutes: no run, whatever is due.
    with runtime.db.begin() as conn:
        conn.execute(text("UPDATE schedules SET active_since = active_since - interval '10 minutes'"))
    fire_due(runtime.engine, now=datetime.now(UTC) + timedelta(seconds=1))
    assert runs_of(runtime, "all-catchup") == []
    assert cli(env, "schedules", "resume", "all-catchup").returncode == 0
    row = row_of(runtime, "all-catchup")
    assert not row.paused and row.active_since > datetime.now(UTC) - timedelta(seconds=30)
    fire_due(runtime.engine, now=row.active_since + timedelta(milliseconds=1))
    assert runs_of(runtime, "all-catchup") == []  # catchup="all", yet the 10 paused ticks stay unfired
    next_tick = minute(row.active_since) + timedelta(minutes=1)
    fire_due(runtime.engine, now=next_tick + timedelta(seconds=1))
    assert [key for key, _ in runs_of(runtime, "all-catchup")] == [
        f"schedule:{row.schedule_id}:{next_tick.isoformat().replace('+00:00', 'Z')}"]
    shown = json.loads(cli(env, "schedules", "--json").stdout)
    mine = next(s for s in shown if s["workflow"] == "all-catchup")
    assert mine["paused"] is False and mine["last_run_id"] is not None and mine["next_fire_at"]


@pytest.mark.parametrize("workflow, said", [
    ("nope", "unknown workflow 'nope' (known: all-catchup,"),
    ("unscheduled", "workflow 'unscheduled' has no schedules; give it triggers=[schedule(cron, ...)]"),
])
def test_pausing_an_unknown_or_unscheduled_workflow_is_a_one_line_error(env, workflow, said):
    out = cli(env, "schedules", "pause", workflow)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: ") and said in out.stderr and "Traceback" not in out.stderr


def test_pause_and_resume_through_the_api(runtime):
    client = make_app(runtime).test_client()
    listed = client.get("/api/schedules")
    assert_documented(listed, "/api/schedules")
    assert {s["workflow"] for s in listed.get_json()} >= {"all-catchup", "broken-input", "no-catchup"}
    path = "/api/schedules/{workflow}/pause"
    assert client.post("/api/schedules/no-catchup/pause").status_code == 401
    paused = client.post("/api/schedules/no-catchup/pause", headers=AUTH)
    assert_documented(paused, path, "post")
    assert [(s["cron"], s["paused"], s["next_fire_at"]) for s in paused.get_json()] == [("* * * * *", True, None)]
    fire_due(runtime.engine, now=datetime.now(UTC) + timedelta(minutes=1, seconds=1))
    assert runs_of(runtime, "no-catchup") == []
    resumed = client.post("/api/schedules/no-catchup/resume", headers=AUTH)
    assert_documented(resumed, "/api/schedules/{workflow}/resume", "post")
    assert resumed.get_json()[0]["paused"] is False and resumed.get_json()[0]["next_fire_at"]
    for name in ("nope", "unscheduled"):
        missing = client.post(f"/api/schedules/{name}/pause", headers=AUTH)
        assert_documented(missing, path, "post")
        assert missing.status_code == 404 and name in missing.get_json()["error"]


def test_the_workflow_page_shows_its_schedules_and_pauses_and_resumes_them(runtime):
    client = make_app(runtime).test_client()
    fire_due(runtime.engine, now=datetime.now(UTC))
    page = client.get("/workflows/broken-input").get_data(as_text=True)
    assert 'id="schedules"' in page and "<code>*/2 * * * *</code>" in page and "Log in</a> to pause" in page
    assert "Last error" not in page
    login(client)
    page = client.get("/workflows/latest-catchup").get_data(as_text=True)
    assert "Pause schedules" in page and 'class="schedule-state">active' in page
    response = client.post("/workflows/latest-catchup/schedules/pause",
                           data={"csrf_token": csrf(client, "/workflows/latest-catchup")})
    assert response.status_code == 302 and response.headers["Location"].endswith("/workflows/latest-catchup#schedules")
    page = client.get("/workflows/latest-catchup").get_data(as_text=True)
    assert "Paused 1 schedule(s)." in page and 'class="schedule-state">paused' in page and "Resume schedules" in page
    assert row_of(runtime, "latest-catchup").paused
    refused = client.post("/workflows/latest-catchup/schedules/resume", data={})
    assert refused.status_code in (400, 403) and row_of(runtime, "latest-catchup").paused  # no CSRF token
    client.post("/workflows/latest-catchup/schedules/resume",
                data={"csrf_token": csrf(client, "/workflows/latest-catchup")})
    assert not row_of(runtime, "latest-catchup").paused
    fire_due(runtime.engine, now=datetime.now(UTC) + timedelta(minutes=1, seconds=1))
    (run_id,) = _ids(runtime, "latest-catchup")
    page = client.get("/workflows/latest-catchup").get_data(as_text=True)
    assert f'href="/runs/{run_id}"' in page
    assert "schedule <code>* * * * *</code> in UTC" in page  # the triggers list
