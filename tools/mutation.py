"""Mutation testing of the core's wings with mutmut: which of the small changes mutmut makes to
the code do the tests notice?

    .venv/bin/python tools/mutation.py                      # every wing
    .venv/bin/python tools/mutation.py --wing masking --wing signing
    .venv/bin/python tools/mutation.py --fast               # the fast subset (FAST)
    .venv/bin/python tools/mutation.py --report             # the last run's report, no run

Each wing is run on its own, with the tests that cover it (WINGS), on SQLite only (on both
databases for BOTH_DATABASES), under `nice -n 19`, one mutant at a time unless `--children N`,
in `mutants/<wing>/` (ignored by git): there mutmut finds the checkout's `web/` and `tests/`
and a pyproject.toml made from the checkout's [tool.mutmut] with the wing's files and tests.
`--resume` goes on with a stopped run. The report gives per wing the mutants, killed, timed out
and surviving, the share killed (of all mutants, and of those not listed as equivalent), and
every survivor (a mutant no test failed for): either equivalent (listed with the reason in
tools/mutation_equivalent.toml) or UNEXPLAINED. Exit status 1 when under 95% of the
non-equivalent mutants were killed or a survivor is unexplained. tests/README.md ("Mutation
testing") says more."""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"
EQUIVALENT = ROOT / "tools" / "mutation_equivalent.toml"
MUTMUT = Path(sys.executable).parent / "mutmut"
# The share of the mutants that are not equivalent that the tests must kill (the mutation score as
# usually given: killed / (mutants - equivalent)). An equivalent mutant, e.g. "ASCII" for "ascii",
# cannot be killed by any test: a share of all mutants measures how many such mutmut writes, not
# the tests. Every survivor must still be listed as equivalent, with why, or the run fails.
TARGET = 95.0

# wing: (the files mutated, the tests run against them)
WINGS = {
    "masking": (["web/privacy.py"], ["tests/test_masking.py", "tests/test_privacy_settings.py"]),
    "signing": (["web/signing.py"], ["tests/test_signing.py"]),
    "judgement": (
        ["web/judgement/classify.py", "web/judgement/judge.py", "web/judgement/clicks.py"],
        # test_group_commit.py: the client names the Judge gives the stored events.
        [
            "tests/test_classify.py",
            "tests/test_truth.py",
            "tests/test_links.py",
            "tests/test_group_commit.py",
        ],
    ),
    "recording": (
        ["web/pixel/recording.py"],
        # test_spool.py: the spool's replay, the other way in.
        [
            "tests/test_pixel.py",
            "tests/test_group_commit.py",
            "tests/test_truth.py",
            "tests/test_spool.py",
            "tests/test_writer.py",
        ],
    ),
    # The worker's writer: its queue, its journal, and the journals the spool takes over.
    # test_pixel.py and test_group_commit.py: the pixel's way in, a fetch alone and the spool;
    # test_security_server.py: the full spool's drops and their log.
    "writer": (
        ["web/pixel/writer.py", "web/pixel/journal.py"],
        [
            "tests/test_writer.py",
            "tests/test_spool.py",
            "tests/test_pixel.py",
            "tests/test_group_commit.py",
            "tests/test_security_server.py",
        ],
    ),
    "state": (
        ["web/receipts/ledger.py"],
        # test_links.py: the clicks that settle_clicks() makes a machine's.
        [
            "tests/test_truth.py",
            "tests/test_status.py",
            "tests/test_retention.py",
            "tests/test_links.py",
        ],
    ),
    "retention": (["web/receipts/retention.py"], ["tests/test_retention.py"]),
    "donottrack": (["web/receipts/donottrack.py"], ["tests/test_privacy_settings.py"]),
    "notifications": (
        [
            "web/notifications/policy.py",
            "web/notifications/outbox.py",
            "web/notifications/reminders.py",
        ],
        ["tests/test_notify.py", "tests/test_reminders.py"],
    ),
    "spool": (["web/pixel/spool.py"], ["tests/test_spool.py"]),
    "signin": (
        ["web/ui/signin.py", "web/accounts.py"],
        # test_api.py and test_cli.py: the API tokens' use, renaming and revoking.
        [
            "tests/test_auth.py",
            "tests/test_security_sessions.py",
            "tests/test_api.py",
            "tests/test_cli.py",
        ],
    ),
}

# Wings whose code has a branch for each database: their tests run on PostgreSQL too (a schema of
# their own for each mutant's run, as for the suite), not on SQLite alone.
BOTH_DATABASES = {"recording", "writer", "state", "notifications"}

# The fast subset (a few minutes here), e.g. for CI: pure functions with fast unit tests.
FAST = ["masking", "signing"]

# mutmut's exit codes for a mutant, as its `results` command names them.
KILLED, TIMEOUT = {1, 3}, {36, 24, -24, 152, 255, -9}
STATUS = {0: "survived", 33: "no tests", 5: "no tests", None: "not run", 34: "skipped"}


def module(path):
    """web/pixel/spool.py -> web.pixel.spool, the start of its mutants' names."""
    return path.removesuffix(".py").replace("/", ".")


def toml_value(value):
    """A TOML value from a string, a number, a boolean or a list of strings (JSON spells them
    the same way)."""
    return json.dumps(value)


def prepare(wing):
    """The wing's mutmut directory: links to the checkout and the wing's pyproject.toml."""
    files, tests = WINGS[wing]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    settings = dict(project["tool"]["mutmut"])
    missing = set(files) - set(settings["only_mutate"])
    if missing:
        sys.exit(f"{wing}: {sorted(missing)} not in pyproject.toml's [tool.mutmut] only_mutate")
    settings.update(only_mutate=files, pytest_add_cli_args_test_selection=tests)
    if wing in BOTH_DATABASES:
        arguments = settings["pytest_add_cli_args"]
        settings["pytest_add_cli_args"] = [
            argument.replace(" and not postgresql", "") for argument in arguments
        ]
    folder = WORK / wing
    folder.mkdir(parents=True, exist_ok=True)
    for name in ["web", "tests", *settings.get("also_copy", [])]:
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    options = dict(project["tool"]["pytest"]["ini_options"])
    # mutmut runs the tests in its own process (and forks one a mutant): not in xdist's.
    options["addopts"] = options.get("addopts", "").replace("-n 3", "-p no:xdist").strip()
    lines = ["[tool.pytest.ini_options]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in options.items()]
    lines += ["", "[tool.mutmut]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


# mutmut stops a mutant's run after a limit of CPU time, which a run that waits forever (a mutant
# that leaves a thread asleep that nobody will wake) never reaches: such a run, which has used
# no CPU for this long, is killed, and counts as timed out (caught, as a hang).
HUNG_SECONDS = 90


def run(wing, children=1, resume=False):
    """Run mutmut over the wing's mutants, all of them again; with `resume`, only those a stopped
    run left without a result. `children`: mutants run at once (a run that mostly waits, as the
    recording wing's on PostgreSQL do, leaves the CPU to others)."""
    folder = prepare(wing)
    # Named, every mutant runs again; unnamed, mutmut keeps the results it has (only_mutate
    # limits it to the wing's files).
    patterns = [] if resume else [f"{module(path)}.*" for path in WINGS[wing][0]]
    command = ["nice", "-n", "19", str(MUTMUT), "run", "--max-children", str(children), *patterns]
    print(f"{wing}: running mutmut (log: {(folder / 'mutmut.log').relative_to(ROOT)})", flush=True)
    started = time.monotonic()
    with (folder / "mutmut.log").open("a" if resume else "w") as log:
        mutmut = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        idle, last = {}, time.monotonic()
        while mutmut.poll() is None:
            now = time.monotonic()
            if now - last > 30:
                idle.clear()  # this script was stopped (kill -STOP) with its runs: start afresh
            kill_hung_runs(mutmut.pid, idle, now)
            last = now
            time.sleep(5)
    seconds = time.monotonic() - started
    (folder / "seconds").write_text(f"{seconds:.0f}\n")
    (folder / "failed").unlink(missing_ok=True)
    if mutmut.returncode != 0:
        (folder / "failed").write_text(f"{mutmut.returncode}\n")
        print(f"{wing}: mutmut failed ({mutmut.returncode}); see {folder / 'mutmut.log'}")


def kill_hung_runs(parent, idle, now):
    """SIGKILL each of mutmut's runs (its child processes) whose CPU time has not moved for
    HUNG_SECONDS; `idle` keeps {pid: (CPU ticks, since when)} between calls."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) != parent:
            continue
        pid, ticks = int(entry.name), int(fields[11]) + int(fields[12])
        if pid not in idle or idle[pid][0] != ticks:
            idle[pid] = (ticks, now)
        elif now - idle[pid][1] > HUNG_SECONDS:
            print(f"killing mutmut's run {pid}: no CPU used for {HUNG_SECONDS} s", flush=True)
            os.kill(pid, signal.SIGKILL)
            del idle[pid]


def results(wing):
    """{mutant name: mutmut's exit code} of the wing's last run ({} if none)."""
    found = {}
    for path in WINGS[wing][0]:
        meta = WORK / wing / "mutants" / f"{path}.meta"
        if meta.exists():
            found.update(json.loads(meta.read_text())["exit_code_by_key"])
    return found


def change(wing, name):
    """What the mutant changes: the lines mutmut writes in its place, stripped, joined by ' / '."""
    shown = subprocess.run(
        [str(MUTMUT), "show", name], cwd=WORK / wing, capture_output=True, text=True
    ).stdout
    lines = shown.splitlines()
    return " / ".join(line[1:].strip() for line in lines if line[:1] == "+" and line[:3] != "+++")


def explain(wing, name, equivalent):
    """'equivalent: <reason>' for a listed mutant that still makes the listed change, else
    'UNEXPLAINED' with the change."""
    made = change(wing, name)
    entry = equivalent.get(name)
    if entry and entry["change"] == made:
        return True, f"equivalent: {entry['reason']}"
    if entry:
        return False, f"UNEXPLAINED (listed as equivalent for another change) {made}"
    return False, f"UNEXPLAINED {made}"


# A row of the report: wing, mutants, killed, timeout, survived, equivalent, killed %, killed %
# of the non-equivalent mutants, time.
ROW = "{:<14}{:>8}{:>8}{:>8}{:>9}{:>11}{:>10}{:>14}{:>8}"


def non_equivalent_share(killed, mutants, equivalent):
    """The share killed (or timed out) among the mutants that are not equivalent: every mutant
    that can change what the code does is one the tests should notice. None if all are."""
    if mutants == equivalent:
        return None
    return 100 * killed / (mutants - equivalent)


def shown(share):
    return "-" if share is None else f"{share:.1f}"


def report(wings):
    """Print the report of the wings' last runs; whether it meets the target."""
    equivalent = tomllib.loads(EQUIVALENT.read_text())
    head = ("wing", "mutants", "killed", "timeout", "survived", "equivalent", "killed %")
    head += ("of non-eq. %", "time")
    print(("\n" + ROW).format(*head))
    totals = [0, 0, 0, 0, 0]
    survivors = []
    for wing in wings:
        codes = results(wing)
        if (WORK / wing / "failed").exists() or not codes:
            print(f"{wing:<14}  {'mutmut failed' if codes else 'not run'}")
            totals[0] += max(len(codes), 1)  # counts as not killed
            continue
        killed = sum(code in KILLED for code in codes.values())
        timeout = sum(code in TIMEOUT for code in codes.values())
        left = sorted(name for name, code in codes.items() if code not in KILLED | TIMEOUT)
        explained = 0
        for name in left:
            ok, why = explain(wing, name, equivalent)
            explained += ok
            status = STATUS.get(codes[name], f"exit code {codes[name]}")
            survivors.append((ok, f"  {name} [{status}]: {why}"))
        seconds = WORK / wing / "seconds"
        took = f"{int(seconds.read_text()) // 60}m" if seconds.exists() else "-"
        share = 100 * (killed + timeout) / len(codes)
        real = non_equivalent_share(killed + timeout, len(codes), explained)
        row = (
            wing,
            len(codes),
            killed,
            timeout,
            len(left),
            explained,
            f"{share:.1f}",
            shown(real),
            took,
        )
        print(ROW.format(*row))
        for i, n in enumerate((len(codes), killed, timeout, len(left), explained)):
            totals[i] += n
    if not totals[0]:
        print("nothing run yet")
        return False
    share = 100 * (totals[1] + totals[2]) / totals[0]
    real = non_equivalent_share(totals[1] + totals[2], totals[0], totals[4])
    print(ROW.format("total", *totals, f"{share:.1f}", shown(real), ""))
    if survivors:
        print("\nsurvivors:")
        print("\n".join(line for _, line in survivors))
    unexplained = sum(not ok for ok, _ in survivors)
    print(
        f"\n{share:.1f}% of all mutants killed, {shown(real)}% of the non-equivalent ones "
        f"(target {TARGET:.0f}%), "
        f"{unexplained} unexplained survivors"
    )
    return (real is None or real >= TARGET) and not unexplained


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wing", action="append", choices=WINGS, help="one wing (repeatable)")
    parser.add_argument("--fast", action="store_true", help=f"the fast subset: {', '.join(FAST)}")
    parser.add_argument("--report", action="store_true", help="report the last run, run nothing")
    parser.add_argument("--children", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument(
        "--resume", action="store_true", help="go on with a stopped run (results stand)"
    )
    arguments = parser.parse_args()
    wings = arguments.wing or (FAST if arguments.fast else list(WINGS))
    if not arguments.report:
        for wing in wings:
            run(wing, arguments.children, arguments.resume)
    sys.exit(0 if report(wings) else 1)


if __name__ == "__main__":
    main()
