"""The `orchestrator` command line as a user's script sees it: output, JSON, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import ROOT, settings_env, wait_for


def cli(env: dict[str, str], *args: str, cwd=ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def env(runtime, settings, redis_url):
    return settings_env(settings, redis_url)


def test_trigger_prints_the_run_id_as_last_word_and_run_json_has_the_contract(env, start_worker, wait_for_run):
    start_worker(concurrency=2)
    out = cli(env, "trigger", "diamond", "--input", '{"n": 2}')
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.split()[-1]
    uuid.UUID(run_id)
    wait_for_run(run_id)
    shown = cli(env, "run", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    run = json.loads(shown.stdout)
    assert {"id", "workflow", "status", "input", "created_at", "started_at", "finished_at", "steps"} <= set(run)
    assert run["status"] == "succeeded" and run["input"] == {"n": 2}
    assert run["created_at"].endswith("+00:00")
    step = run["steps"][0]
    assert {"name", "status", "result", "error", "attempts"} <= set(step)
    assert isinstance(step["attempts"], list) and step["attempts"][0]["status"] == "succeeded"
    listed = json.loads(cli(env, "runs", "--workflow", "diamond", "--status", "succeeded", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id]
    assert listed[0]["steps"]
    assert run_id in cli(env, "runs").stdout
    assert "step d: succeeded" in cli(env, "run", run_id).stdout


def test_workflows_lists_steps_triggers_and_queues(env):
    out = cli(env, "workflows")
    assert out.returncode == 0, out.stderr
    assert "diamond" in out.stdout and "step d after b, c" in out.stdout
    assert "queues to serve:" in out.stdout
    data = json.loads(cli(env, "workflows", "--json").stdout)
    assert {w["name"] for w in data} >= {"diamond", "fanout"}


@pytest.mark.parametrize(
    ("args", "overrides", "message"),
    [
        (("trigger", "nope"), {}, "unknown workflow 'nope'"),
        (("trigger", "diamond", "--input", "{not json"), {}, "--input is not valid JSON"),
        (("trigger", "diamond", "--input", "[1, 2]"), {}, "must be a JSON object"),
        (("run", "not-a-uuid"), {}, "run ids are UUIDs"),
        (("run", str(uuid.UUID(int=1))), {}, "no run"),
        (("runs",), {"ORCHESTRATOR_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"},
         "cannot reach the database"),
        (("trigger", "diamond"), {"ORCHESTRATOR_WORKFLOWS": "no_such_module"},
         "cannot import workflow module 'no_such_module'"),
        (("runs",), {"ORCHESTRATOR_STEP_LEASE": "soon"}, "is not a number"),
    ],
)
def test_a_wrong_setting_or_argument_is_one_clear_line(env, args, overrides, message):
    out = cli({**env, **overrides}, *args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_db_upgrade_creates_the_schema(tmp_path):
    env = {**os.environ, "ORCHESTRATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    out = cli(env, "db", "upgrade")
    assert out.returncode == 0, out.stderr
    assert "is at revision head" in out.stdout


def test_dev_runs_the_examples_on_embedded_defaults_and_stops_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    log = (tmp_path / "dev.log").open("w")
    dev = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "dev"], cwd=tmp_path, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: "orchestrator dev is running" in (tmp_path / "dev.log").read_text(), 90,
                 message="dev to start")
        out = cli(env, "trigger", "sales-report", "--input", '{"sales": [3, 1, 2]}', cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        run_id = out.stdout.split()[-1]

        def finished() -> dict | None:
            shown = cli(env, "run", run_id, "--json", cwd=tmp_path)
            run = json.loads(shown.stdout) if shown.returncode == 0 else {}
            return run if run.get("status") == "succeeded" else None

        run = wait_for(finished, 90, 1, "the example run to succeed")
        publish = {s["name"]: s for s in run["steps"]}["publish"]
        assert publish["result"] == {"count": 3, "sum": 6.0, "median": 2.0, "max": 3.0}
    finally:
        os.killpg(dev.pid, signal.SIGINT)
        code = dev.wait(60)
    text = (tmp_path / "dev.log").read_text()
    assert "stopped" in text, text[-3000:]
    assert code == 0
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-f", f"orchestrator worker.*{tmp_path}"], capture_output=True)
    assert leftovers.returncode != 0
