"""Browser fixtures: the dashboard served by waitress on a free port, driven by Debian's chromium.

Playwright never downloads a browser here: it launches /usr/bin/chromium (install it with
`apt-get install -y chromium`; ./scripts/test does). Every console error (a CSP violation
included) and every uncaught page error fails the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from waitress.server import create_server

from tests.webtools import WORKFLOWS, make_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
#: Poll interval of the pages' live updates in these tests (the default is 2000 ms).
POLL_MS = 400


@pytest.fixture
def settings(settings):
    return settings.with_(workflows=WORKFLOWS)


@pytest.fixture
def server(runtime) -> Iterator[str]:
    """The app, served by waitress in a thread of this process; yields its base URL."""
    app = make_app(runtime, POLL_MS=POLL_MS)
    served = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=served.run, name="waitress", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{served.effective_port}"
    served.close()
    thread.join(5)


@pytest.fixture(scope="session")
def browser():  # noqa: ANN201 - a playwright Browser
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (./scripts/test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server: str, tmp_path: Path):  # noqa: ANN201 - a playwright Page
    # Depends on `server` so the page closes before the server stops: a live-update poll
    # cut off by the shutdown would otherwise be reported as a console error.
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda d: problems.append(f"dialog opened: {d.message}"))
    yield page
    context.close()
    assert not problems, problems


def shot(page, tmp_path: Path, name: str) -> Path:  # noqa: ANN001
    """Save a full-page screenshot under the test's temporary folder."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000
    return path
