"""One table for the write path: bench/pixel_load.py's run on SQLite and on PostgreSQL, each
with mostly repeats (--networks one) and with every fetch a new event (--networks many), one row
a configuration: pixel and floor req/s and their ratio against the target, p50/p99 of
both, whether the stored events add up to the answers, the fetch-to-visible delay, the pixel
workers' memory; with --kill, what a kill -9 of a worker and of the whole server left of the
answered fetches (once a database, with the every-fetch-new run). Not a timed test: run it by
hand (see bench/README.md). Exits 1 when a run does (an error, or events that do not add up).

    .venv/bin/python bench/ingest.py [--database-url postgresql://...] [--duration 6]
        [--rounds 4] [--kill]
"""

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path

# bench/pixel_load.py, beside this script: each configuration is one of its runs.
import pixel_load
from pixel_load import LOAD_NAMES, PROBE_TARGET


def main(argv=None):
    args = parse_args(argv)
    configurations = [("SQLite", None)]
    if args.database_url:
        configurations.append(("PostgreSQL", args.database_url))
    load_average = Path("/proc/loadavg").read_text().split()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load_average} before the matrix")
    if not args.database_url:
        print("PostgreSQL: left out (give --database-url postgresql://...)")
    started = time.monotonic()
    results = []
    for database, url in configurations:
        for networks in ("one", "many"):
            print(f"\n=== {database}, --networks {networks} ({LOAD_NAMES[networks]}) ===")
            run_argv = [
                "--duration",
                str(args.duration),
                "--rounds",
                str(args.rounds),
                "--networks",
                networks,
                "--notify",
                args.notify,
                "--connections",
                str(args.connections),
                "--load",
                args.load,
            ]
            if url:
                run_argv += ["--database-url", url]
            if args.kill and networks == "many":
                run_argv.append("--kill")
            sys.stdout.flush()
            results.append(pixel_load.run_once(pixel_load.parse_args(run_argv)))
    print(f"\n=== all configurations ({time.monotonic() - started:.0f} s) ===\n")
    print_table(results, args)
    if any(result.kills for result in results):
        print()
        print_kills(results)
    failed = [f"{r.database} {LOAD_NAMES[r.networks]}" for r in results if r.status]
    print()
    if failed:
        print(f"FAIL: {', '.join(failed)} (see each run's report above)")
        return 1
    print("OK: no errors, and in every run the stored events add up to the answers")
    return 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        help="postgresql://... for the PostgreSQL rows (a schema of their own is made and "
        "dropped); without it, only SQLite's rows (a fresh temporary directory each)",
    )
    parser.add_argument(
        "--duration", type=int, default=6, help="seconds of load a server and round (default 6)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="rounds a configuration (default 4)")
    parser.add_argument(
        "--kill",
        action="store_true",
        help="with each database's every-fetch-new run, pixel_load.py's --kill phase",
    )
    parser.add_argument("--notify", choices=("off", "first", "every"), default="off")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args(argv)
    if args.database_url and not args.database_url.startswith(("postgresql:", "postgres:")):
        parser.error("--database-url is for the PostgreSQL rows: postgresql://...")
    return args


def print_table(results, args):
    rows = "event and notice" if args.notify != "off" else "event"
    header = (
        f"{'database':<10} {'load':<15} {'pixel':>6} {'floor':>6} {'ratio':>5} "
        f"{'target':>9}  {'pixel p50/p99':>13} {'floor p50/p99':>13}  "
        f"{'events = answers':<22} {'visible p50/p99':>15} {'> 1 s (spooled)':>15}  "
        f"{'RSS':>6} {'PSS':>6}  {'CPU/req pixel/floor':>19}"
    )
    units = (
        f"{'':<10} {'':<15} {'req/s':>6} {'req/s':>6} {'':>5} {'':>9}  {'ms':>13} {'ms':>13}  "
        f"{'':<22} {'ms':>15} {'':>15}  {'MiB':>6} {'MiB':>6}  {'ms':>19}"
    )
    print(header)
    print(units)
    print("-" * len(header))
    for result in results:
        pixel, floor = result.loads["pixel"], result.loads["floor"]
        ok, _, stored, answered = result.events
        visible = result.visibility
        memory = result.memory["pixel"]
        met = "met" if result.ratio >= result.target else "no"
        probes = f"{visible.percentile_ms(50):.0f} / {visible.percentile_ms(99):.0f}"
        late = f"{visible.late} ({visible.late_spooled})"
        print(
            f"{result.database:<10} {LOAD_NAMES[result.networks]:<15} {pixel.rate:6.0f} "
            f"{floor.rate:6.0f} {result.ratio:5.2f} {'>= ' + str(result.target) + ' ' + met:>9}  "
            f"{f'{pixel.p50_ms:.0f} / {pixel.p99_ms:.0f}':>13} "
            f"{f'{floor.p50_ms:.0f} / {floor.p99_ms:.0f}':>13}  "
            f"{('yes ' if ok else 'NO ') + f'{stored:,} / {answered:,}':<22} "
            f"{probes:>15} {late:>15}  "
            f"{sum(memory.rss) / 1024:6.0f} {sum(value or 0 for value in memory.pss) / 1024:6.0f}  "
            f"{f'{pixel.cpu_ms:.2f} / {floor.cpu_ms:.2f}':>19}"
        )
    print()
    note = (
        f"ratio: pixel req/s / floor req/s, the median of the rounds' (each round loads the two "
        f"back to back; pixel and floor req/s are over all the rounds), against the target "
        f"(every-fetch-new 0.8 on SQLite, 0.6 on PostgreSQL; repeat-heavy 0.9). p50/p99: the "
        f"rounds' medians. events = "
        f"answers: events stored / fetches answered 'recorded', 'queued' or 'spooled' (the "
        f"probes' included), checked as pixel_load.py does. visible: from sending a probe's "
        f"fetch (a fresh pixel every {pixel_load.PROBE_INTERVAL * 1000:.0f} ms) to seeing "
        f"its {rows} row in the database; '> {PROBE_TARGET:g} s': probes later than that (the "
        f"issue's bound) or never seen, and of them those answered 'spooled' (written by a "
        f"replay). RSS, PSS: sums over the pixel's workers. CPU/req: the workers' CPU time (user + "
        f"system) per answered request, the pixel's and the floor's; the load generator's and "
        f"the database server's are not in it."
    )
    print(textwrap.fill(note, width=100))


def print_kills(results):
    header = (
        f"{'database':<10} {'kill -9 of':<19} {'answered':>8} {'recorded':>8} {'queued':>7} "
        f"{'spooled':>7} {'events':>7} {'keyed':>5} {'LOST':>4} {'in flight':>9} {'stored':>6} "
        f"{'twice':>5}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        for kill in result.kills:
            print(
                f"{result.database:<10} {kill.scenario:<19} {sum(kill.answered.values()):8,} "
                f"{kill.answered['recorded']:8,} {kill.answered['queued']:7,} "
                f"{kill.answered['spooled']:7,} {kill.stored:7,} {kill.replayed:5,} "
                f"{kill.lost:4,} {kill.in_flight:9,} {kill.in_flight_stored:6,} {kill.twice:5,}"
            )
    print()
    note = (
        "answered: fetches that got an answer (Python load, every fetch a new event); events: "
        "stored for them, 'keyed' of them stored by the worker's writer or the spool (spool_key "
        "set); LOST: answered 'recorded', 'queued' or 'spooled' and not stored (must be 0); in "
        "flight: sent and never answered when the process died, 'stored' of them stored anyway "
        "(not a loss: no answer promised anything)"
    )
    print(textwrap.fill(note, width=100))


if __name__ == "__main__":
    sys.exit(main())
