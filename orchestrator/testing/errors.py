"""The harness's own error."""

from __future__ import annotations

from ..errors import OrchestratorError


class HarnessError(OrchestratorError):
    """The test asked the harness for something it cannot do; the message says what instead."""
