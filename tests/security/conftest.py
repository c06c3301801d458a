"""Fixtures of the security tests: the dashboard's test workflows plus the hostile ones."""

from __future__ import annotations

import pytest

from tests.webtools import WORKFLOWS, make_app

#: Workflow modules of the security tests that need no Kafka.
SECURITY_WORKFLOWS = (*WORKFLOWS, "tests.wait_flows", "tests.security.hostile_flows", "tests.compose_web_flows")


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=SECURITY_WORKFLOWS)


@pytest.fixture
def app(runtime):
    return make_app(runtime)


@pytest.fixture
def client(app):
    return app.test_client()
