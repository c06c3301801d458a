"""Hostile input shared by the security tests: strings that try to inject, and strategies
for Kafka message values that must each be rejected with a reason.

The strategies are plain `hypothesis` strategies; `corpus()` draws a fixed sample of them
(derandomized), so the test that publishes them to a real broker sends the same messages
on every run and on every machine.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

#: Strings that try to inject HTML, script, SQL or template code, or to confuse a reader.
HOSTILE_STRINGS = (
    "<script>alert('xss')</script>",
    '"><img src=x onerror=alert(1)>',
    "'; DROP TABLE runs; --",
    "Robert'); DELETE FROM events WHERE ('1'='1",
    "{{7*7}}",
    "{% raw %}{{ config }}{% endraw %}",
    "${7*7}",
    "javascript:alert(document.cookie)",
    "</textarea></pre><svg onload=alert(1)>",
    "\u202etxt.exe",  # right-to-left override
    "%3Cscript%3E",
)
#: What none of the dashboard's HTML may contain, whatever it shows (each a raw HTML fragment
#: of a hostile string above; their escaped forms are fine).
RAW_HTML_FRAGMENTS = ("<script>alert", "<img src=x", "<svg onload", "</textarea></pre>")

# -- JSON building blocks ----------------------------------------------------------------

#: Text PostgreSQL can store: no NUL, no unpaired surrogate (category Cs), both excluded
#: explicitly (newer hypothesis releases do generate surrogates by default).
storable_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(
    allow_nan=False, allow_infinity=False
) | storable_text | st.sampled_from(HOSTILE_STRINGS)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(storable_text, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(storable_text, json_values, max_size=5)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


# -- messages that must be rejected, one strategy per kind ----------------------------------

_invalid_utf8_tails = st.sampled_from([b"\xff", b"\xc3", b"\xe2\x82", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"])


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    """A JSON object whose bytes hold a sequence that is not UTF-8."""
    text = _dumps(draw(json_objects))
    cut = draw(st.integers(0, len(text)))
    return text[:cut] + draw(_invalid_utf8_tails) + text[cut:]


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """Arrays or objects nested deeper than the orchestrator accepts (up to 50,000 levels)."""
    depth = draw(st.integers(101, 50_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
    return b'{"n": 1, "deep": ' + opener * depth + b"0" + closer * depth + b"}"


@st.composite
def huge_string(draw: st.DrawFn, limit: int) -> bytes:
    """A valid event made too big by one long string."""
    extra = draw(st.integers(1, 2 * limit))
    char = draw(st.sampled_from(["x", "é", "\u4e2d", "\U0001f600"]))
    return _dumps({"n": 1, "pad": char * (limit + extra)})


@st.composite
def duplicate_keys(draw: st.DrawFn) -> bytes:
    """An object that names one key twice: readers disagree on which value counts."""
    key = draw(st.sampled_from(["n", "type", "user"]) | storable_text)
    first, second = draw(json_values), draw(json_values)
    rest = _dumps(draw(json_objects))[1:-1]
    pairs = [f"{json.dumps(key)}: {json.dumps(first)}", f"{json.dumps(key)}: {json.dumps(second)}"]
    body = ", ".join(pairs)
    return ("{" + body + (", " + rest.decode() if rest else "") + "}").encode()


@st.composite
def nul_characters(draw: st.DrawFn) -> bytes:
    """An event with U+0000 in a value or a key (PostgreSQL cannot store it)."""
    where = draw(st.sampled_from(["value", "key"]))
    text = draw(storable_text)
    spot = draw(st.integers(0, len(text)))
    nul = text[:spot] + "\x00" + text[spot:]
    event = {"n": 1, "s": nul} if where == "value" else {"n": 1, nul: 1}
    return json.dumps(event).encode()


unpaired_surrogates = st.sampled_from(["\\ud800", "\\udfff", "\\uDBFF x", "\\udc00\\ud800"]).map(
    lambda escape: b'{"n": 1, "s": "' + escape.encode() + b'"}'
)
non_objects = json_values.filter(lambda v: not isinstance(v, dict)).map(_dumps)
out_of_range_numbers = st.sampled_from(
    [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity", b"9" * 5000, b"-" + b"1" * 4301]
).map(lambda number: b'{"n": 1, "x": ' + number + b"}")
not_json = st.sampled_from(
    [b"", b" ", b"{", b"{'n': 1}", b"n=1", b"\xef\xbb\xbf{}", b'{"n": 1,}', b"<n>1</n>", b"\x00"]
) | st.binary(max_size=200).filter(lambda b: not b.strip().startswith((b"{", b"[", b'"')))
#: Objects the `strict` test workflow refuses: a function that raises, a failing schema.
refused_by_triggers = st.sampled_from(
    [{"explode": "match", "n": 1}, {"explode": "input", "n": 1}, {"n": "seven"}, {"n": 1.5}, {}]
).map(_dumps) | json_objects.filter(lambda o: not isinstance(o.get("n"), int)).map(_dumps)


def hostile_values(limit: int) -> dict[str, st.SearchStrategy[bytes]]:
    """Every kind of hostile message value, by name; `limit` is the size limit in bytes."""
    return {
        "invalid-utf8": invalid_utf8(),
        "deep-nesting": deep_nesting(),
        "huge-string": huge_string(limit),
        "duplicate-keys": duplicate_keys(),
        "nul-character": nul_characters(),
        "unpaired-surrogate": unpaired_surrogates,
        "non-object": non_objects,
        "number-out-of-range": out_of_range_numbers,
        "not-json": not_json,
        "refused-by-trigger": refused_by_triggers,
    }


def corpus(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of `strategy`, the same ones on every run (derandomized, no database)."""
    drawn: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn[:count]
