"""Consumer throughput with tracing off and on against today's code (before tracing).

Runs `bench/consumer_throughput.py` (Tansu, PostgreSQL, Redis; see it) in turns:

- today: that script and the orchestrator as of `--baseline` (default: the commit before
  tracing, 8723fbc), extracted with `git archive` into a temporary directory;
- off:   this tree, tracing not configured (the default);
- on:    this tree, tracing on through the OpenTelemetry SDK (spans made, then dropped).

Each mode runs `--repeat` times, interleaved, and the best rate of each is compared (the
best is the least disturbed by other load). The target: off >= 0.97x today.

    python bench/tracing_overhead.py [--events 20000] [--repeat 3] [--baseline REF]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.intake_modes import rate, today_tree  # noqa: E402

#: The commit before tracing (issue 13's dependencies only).
BASELINE = "8723fbc"
#: What tracing off may cost at most, as a fraction of today's throughput.
TARGET = 0.97


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="git ref of today's code")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-today-") as tmp:
        today = today_tree(args.baseline, Path(tmp))
        rates: dict[str, list[float]] = {"today": [], "off": [], "on": []}
        for n in range(args.repeat):
            for mode, tree, traced in (("today", today, False), ("off", ROOT, False), ("on", ROOT, True)):
                rates[mode].append(rate(tree, args.events, traced))
                print(f"run {n + 1} {mode:5}: {rates[mode][-1]:10,.0f} events/s", flush=True)
    best = {mode: max(values) for mode, values in rates.items()}
    print(f"today (baseline {args.baseline}): {best['today']:10,.0f} events/s (best of {args.repeat})")
    print(f"tracing off:              {best['off']:10,.0f} events/s = {best['off'] / best['today']:.3f}x today")
    print(f"tracing on (SDK):         {best['on']:10,.0f} events/s = {best['on'] / best['today']:.3f}x today")
    verdict = "meets" if best["off"] >= TARGET * best["today"] else "MISSES"
    print(f"target off >= {TARGET}x today:  {verdict}")


if __name__ == "__main__":
    main()
