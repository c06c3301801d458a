"""The `orchestrator` command line as a user's script sees it: output, JSON, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.fixtures.config import ROOT, settings_env


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

