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
