from __future__ import annotations

import pytest

from orchestrator.errors import ConfigurationError
from orchestrator.settings import DEFAULT_DATABASE_URL, Settings


def test_defaults_are_the_embedded_dev_stack():
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.broker_url.startswith("sqla+sqlite")
    assert settings.workflows == ("workflows",)


def test_environment_overrides_and_postgres_urls_use_psycopg3():
    settings = Settings.from_env(
        {
            "ORCHESTRATOR_DATABASE_URL": "postgresql://u@h/db",
            "ORCHESTRATOR_WORKFLOWS": "a.b, c",
            "ORCHESTRATOR_STEP_LEASE": "7.5",
        }
    )
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.workflows == ("a.b", "c")
    assert settings.step_lease == 7.5


def test_malformed_numbers_are_a_clear_error():
    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_STEP_LEASE='soon' is not a number"):
        Settings.from_env({"ORCHESTRATOR_STEP_LEASE": "soon"})


def test_web_access_switches_are_off_by_default_and_read_from_the_environment():
    settings = Settings.from_env({})
    assert not settings.web_read_auth and not settings.metrics_public
    assert not settings.web_secure_cookie
    settings = Settings.from_env({
        "ORCHESTRATOR_WEB_READ_AUTH": "1",
        "ORCHESTRATOR_METRICS_PUBLIC": "true",
        "ORCHESTRATOR_WEB_SECURE_COOKIE": "yes",
    })
    assert settings.web_read_auth and settings.metrics_public and settings.web_secure_cookie
    assert not Settings.from_env({"ORCHESTRATOR_WEB_READ_AUTH": "0"}).web_read_auth


def test_a_malformed_switch_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="ORCHESTRATOR_WEB_READ_AUTH='maybe' must be 1 or 0"):
        Settings.from_env({"ORCHESTRATOR_WEB_READ_AUTH": "maybe"})
