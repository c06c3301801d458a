"""Consumer throughput in each way the intake can run, against today's code, in one script.

Runs `bench/consumer_throughput.py` (Tansu, PostgreSQL, Redis; see it) once per mode and
round, interleaved, and compares the best rate of each mode (the least disturbed by other
load) with today's: the orchestrator as of `--baseline` (default: this session's starting
commit), extracted with `git archive` into a temporary directory, plaintext, no tracing.

Modes of this tree: plaintext; TLS (socat in front of Tansu: the figure includes socat's
relaying); tracing on (OpenTelemetry SDK, spans made then dropped); TLS and tracing; a
`Batch` trigger (matching events batched 100 to a run instead of one run each); a batch
trigger over TLS.

    python bench/intake_modes.py [--events 20000] [--repeat 3] [--baseline REF] [--modes a,b]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Today's code: the commit this session started from (before TLS, formats, reprocessing).
BASELINE = "393be18"
#: name: (consumer_throughput.py arguments, tracing on)
MODES: dict[str, tuple[list[str], bool]] = {
    "plaintext": ([], False),
    "tls": (["--tls"], False),
    "tracing": ([], True),
    "tls+tracing": (["--tls"], True),
    "batch": (["--trigger", "batch"], False),
    "batch+tls": (["--trigger", "batch", "--tls"], False),
}


def rate(tree: Path, events: int, tracing: bool = False, extra: list[str] | None = None) -> float:
    """The orchestrator consumer's events/s from one run of `tree`'s consumer_throughput.py."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("BENCH_TRACING", None)
    if tracing:
        env["BENCH_TRACING"] = "1"
    done = subprocess.run([sys.executable, str(tree / "bench" / "consumer_throughput.py"),
                           "--events", str(events), *(extra or [])], env=env, cwd=tree,
                          capture_output=True, text=True, timeout=1200)
    found = re.search(r"orchestrator consumer:\s+([\d,]+) events/s", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the benchmark failed in {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(found.group(1).replace(",", ""))


def today_tree(ref: str, into: Path) -> Path:
    """The orchestrator as of `ref`, extracted into `into`."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE, help="git ref of today's code")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    rates: dict[str, list[float]] = {m: [] for m in ["today", *modes]}
    with tempfile.TemporaryDirectory(prefix="bench-today-") as tmp:
        today = today_tree(args.baseline, Path(tmp))
        for n in range(args.repeat):
            rates["today"].append(rate(today, args.events))
            print(f"round {n + 1} {'today':12}: {rates['today'][-1]:10,.0f} events/s", flush=True)
            for mode in modes:
                extra, traced = MODES[mode]
                rates[mode].append(rate(ROOT, args.events, traced, extra))
                print(f"round {n + 1} {mode:12}: {rates[mode][-1]:10,.0f} events/s", flush=True)
    best = {mode: max(values) for mode, values in rates.items()}
    print(f"\n{args.events} events, 1 in 10 matching, best of {args.repeat} rounds")
    print(f"{'mode':14} {'events/s':>10}  vs today ({args.baseline})")
    for mode, value in best.items():
        print(f"{mode:14} {value:10,.0f}  {value / best['today']:.3f}x")


if __name__ == "__main__":
    main()
