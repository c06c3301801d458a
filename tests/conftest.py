"""Layered fixtures: real PostgreSQL, real Redis, real Tansu, real worker and consumer processes.

Every shared fixture lives in tests/fixtures/ (its package docstring lists the modules);
this file only registers them, with the harness (`orchestrator_test`), which the package's
pytest11 entry point also loads once installed, named here so the suite does not depend on
how the package was installed. Kafka test modules use the Kafka settings for everything
(workers included) with::

    @pytest.fixture
    def settings(kafka_settings): return kafka_settings
"""

pytest_plugins = [
    "tests.fixtures.config",
    "tests.fixtures.services",
    "tests.fixtures.private",
    "tests.fixtures.processes",
    "tests.fixtures.kafka",
    "tests.fixtures.waiting",
    "tests.fixtures.ordering",
    "orchestrator.testing",
    "pytester",
]
