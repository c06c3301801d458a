"""The pytest side of the harness: the `orchestrator_test` fixture and its marker.

Each test gets a `Harness` on a copy of a SQLite database that the session migrated once,
its own fake clock, and the workflows chosen, in this order of precedence:

1. `orchestrator_test.load(workflows=[...])` inside the test;
2. `@pytest.mark.orchestrator(workflows=[...])` on the test, its class or module
   (`pytestmark`); the marker's other keywords are `start=` (the clock's first reading)
   and any `Settings` field (`max_event_bytes=100`);
3. the ORCHESTRATOR_WORKFLOWS environment variable;
4. the settings default, the `workflows` package.

Every pytest session of a project with the package installed imports this module (the
`pytest11` entry point), so it imports nothing of the orchestrator until a test asks for
the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .harness import Harness

MARKER = "orchestrator"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(workflows=None, start=None, **settings): configure the orchestrator_test "
        "fixture (workflow modules or Workflow objects, the fake clock's start, Settings fields)",
    )
    # kafka-python reads its protocol schemas with importlib.resources' legacy API: two
    # DeprecationWarnings per schema, hundreds per session, none of them about the user's code.
    for legacy in ("read_text", "open_text"):
        config.addinivalue_line(
            "filterwarnings", f"ignore:{legacy} is deprecated:DeprecationWarning"
        )


@pytest.fixture(scope="session")
def orchestrator_database_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per session; each test gets a copy."""
    from .database import migrated_template

    return migrated_template(tmp_path_factory.mktemp("orchestrator-template"))


@pytest.fixture
def orchestrator_test(
    request: pytest.FixtureRequest, orchestrator_database_template: Path, tmp_path: Path
) -> Iterator[Harness]:
    """An isolated orchestrator for one test: real engine, in-process steps, a fake clock."""
    from .database import copy_of
    from .harness import Harness, default_workflows

    marker = request.node.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    workflows = options.pop("workflows", None) or default_workflows()
    with Harness(copy_of(orchestrator_database_template, tmp_path), workflows, **options) as harness:
        yield harness
