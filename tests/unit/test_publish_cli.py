"""`orchestrator publish`'s header and CloudEvent flags: refused before any broker is reached."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from orchestrator.cli import main


def publish(*args: str):  # noqa: ANN201 - a click Result
    env = {"ORCHESTRATOR_KAFKA_BOOTSTRAP": "127.0.0.1:1"}  # never reached: flags are checked first
    return CliRunner().invoke(main, ["publish", "t", "{}", *args], env=env)


@pytest.mark.parametrize("header", ["no-equals", "=value"])
def test_a_malformed_header_is_a_one_line_error(header):
    result = publish("--header", header)
    assert result.exit_code == 1
    assert result.output == f"Error: --header {header!r}: expected NAME=VALUE (a header name, '=', its value)\n"


def test_source_without_cloudevent_is_a_usage_error():
    result = publish("--source", "/cli")
    assert result.exit_code == 2
    assert "--source is the source of a CloudEvent: give --cloudevent TYPE too" in result.output


def test_cloudevent_without_source_is_a_usage_error():
    result = publish("--cloudevent", "com.shop.order.created")
    assert result.exit_code == 2
    assert "--cloudevent TYPE needs a non-empty TYPE and --source SRC" in result.output


def test_a_header_replaces_the_cloudevent_header_of_its_name_and_values_may_hold_equals():
    from orchestrator.cli import _message_headers

    headers = _message_headers(("Content-Type=text/plain", "q=a=b"), "t.created", "/cli")
    names = [name for name, _ in headers]
    assert names[:5] == ["ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time"]
    assert "content-type" not in names and ("Content-Type", b"text/plain") in headers
    assert headers[-1] == ("q", b"a=b")
    assert _message_headers((), None, None) == []
