"""The README's "Testing your workflows" examples pass, run as a user's test file would be."""

from __future__ import annotations

import re

from tests.fixtures.config import ROOT

README = (ROOT / "README.md").read_text()


def readme_tests() -> str:
    section = README.split("## Testing your workflows", 1)[1].split("\n## ", 1)[0]
    return "\n\n".join(re.findall(r"```python\n(.*?)```", section, re.DOTALL))


def test_the_readme_examples_pass_against_the_shipped_workflows(pytester, monkeypatch):
    code = readme_tests()
    assert "def test_express_order_ships_by_courier(orchestrator_test)" in code
    assert "def test_order_events_start_runs(orchestrator_test)" in code
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("ORCHESTRATOR_WORKFLOWS", raising=False)  # the default: `workflows`
    pytester.makepyfile(test_readme_examples=code)
    result = pytester.runpytest_inprocess("-p", "orchestrator.testing", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=code.count("\ndef test_") + code.startswith("def test_"))
