"""The README's shell examples work as written, in a fresh shell, after the README's install.

Which blocks run: every fenced ```sh, ```bash and ```console block runs, unless an HTML comment
on the line right before its fence says otherwise, so a new block is tested by default. The
comment is `<!-- readme-test: DIRECTIVE; DIRECTIVE -->`, with these directives:

- `skip: REASON`: never run, for a block that starts a long-running server, needs the network or
  root, or touches the real system; REASON says which (it ends the comment).
- `pending`: the block shows `openreceipt` commands that are not built yet. It is skipped while
  one of them is unknown to the command line, and runs as soon as all of them exist.
- `server`: the block talks to the server. It runs against one started as the README's first
  command starts it (below), its `http://127.0.0.1:8000` replaced by that server's address.
- `input "TEXT"`: what the reader types at the block's prompts, as a JSON string ("\\n" ends a
  line). Without it the block's standard input is empty: a prompt fails instead of waiting.

How they run: in the README's order, each in a fresh `bash -euo pipefail`, in a temporary
directory holding only `.venv`, a link to the virtual environment running the tests, so that
`.venv/bin/openreceipt` works as written and `./instance` is never the repository's. Every block
shares one temporary `OPENRECEIPT_DATA_DIR` (a block may need what an earlier one made, e.g. a
user), no other `OPENRECEIPT_*` variable, and a `PATH` on which no `openreceipt` is found. The
server is started once, at the first `server` block: `.venv/bin/gunicorn wsgi:app` from the
repository root, with gunicorn.conf.py, as tests/servers.py starts every test server, on the
same data dir, on a free port (`OPENRECEIPT_BIND`), one worker, no MX look-ups (no network).

A block whose last line is a comment showing JSON (`# {"id": …, "url": …}`) must print JSON
with at least those keys.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from web.cli import cli

from .conftest import unavailable
from .servers import start_gunicorn

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELLS = {"sh", "bash", "console"}
MARKER = re.compile(r"^<!-- readme-test: (.*) -->$")
FENCE = re.compile(r"^```(\S*)\s*$")
README_SERVER = "http://127.0.0.1:8000"
TIMEOUT = 120


@dataclass
class Block:
    line: int  # of the opening fence, counted from 1
    language: str
    text: str
    marker: str | None  # the readme-test comment's directives, if any

    @property
    def directives(self):
        """{name: value}: skip -> its reason, input -> the text typed, others -> True."""
        found = {}
        rest = self.marker or ""
        while rest:
            rest = rest.strip()
            if rest.startswith("skip:"):
                found["skip"] = rest[len("skip:") :].strip()
                break
            name = re.match(r"(server|pending|input)\b", rest)
            if name is None:
                raise ValueError(f"README line {self.line}: unknown directive in {self.marker!r}")
            rest = rest[name.end() :].strip()
            if name.group(1) == "input":
                text, end = json.JSONDecoder().raw_decode(rest)
                found["input"] = text
                rest = rest[end:]
            else:
                found[name.group(1)] = True
            rest = rest.strip()
            if rest and not rest.startswith(";"):
                raise ValueError(f"README line {self.line}: expected ';' in {self.marker!r}")
            rest = rest[1:]
        return found

    @property
    def script(self):
        """What the reader types: the whole block, or a console block's `$ ` lines."""
        if self.language != "console":
            return self.text
        typed, continued = [], False
        for line in self.text.splitlines():
            if continued or line.startswith("$ "):
                typed.append(line if continued else line[2:])
                continued = line.endswith("\\")
        return "\n".join(typed) + "\n"


def readme_blocks():
    """Every fenced block of the README, with the readme-test comment right before it."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, opened = [], None
    for number, line in enumerate(lines, start=1):
        fence = FENCE.match(line)
        if opened is None and fence:
            before = MARKER.match(lines[number - 2]) if number > 1 else None
            opened = Block(number, fence.group(1), "", before.group(1) if before else None)
        elif opened is not None and line == "```":
            blocks.append(opened)
            opened = None
        elif opened is not None:
            opened.text += line + "\n"
    return blocks


BLOCKS = readme_blocks()
SHELL_BLOCKS = [block for block in BLOCKS if block.language in SHELLS]


def typed_lines(script):
    """The script's commands, a line ending in a backslash joined to the next."""
    return script.replace("\\\n", " ").splitlines()


def missing_commands(script):
    """The `openreceipt` commands and options in `script` the command line does not know."""
    missing = []
    for line in typed_lines(script):
        words = shlex.split(line, comments=True)
        for at, word in enumerate(words):
            if not word.endswith(".venv/bin/openreceipt"):
                continue
            command, path = cli, ["openreceipt"]
            for argument in words[at + 1 :]:
                if argument.startswith("-"):
                    known = {"--help"}.union(
                        *(param.opts + param.secondary_opts for param in command.params)
                    )
                    if argument not in known:
                        missing.append(" ".join([*path, argument]))
                elif isinstance(command, click.Group):
                    if argument not in command.commands:
                        missing.append(" ".join([*path, argument]))
                        break
                    command = command.commands[argument]
                    path.append(argument)
                else:
                    break
    return missing


def runs(block):
    directives = block.directives
    return "skip" not in directives and not (
        directives.get("pending") and missing_commands(block.script)
    )


# What needs no process: the top of the README, the markers, the commands' spelling.


def test_the_readme_starts_with_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    first = BLOCKS[0]
    assert first.line < text[: text.index("\n## ")].count("\n") + 1, "no block before ## First"
    assert first.language == "sh"
    server, tests = first.text.splitlines()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    ci_tests = ci[ci.index("# The README's test command, as written there:") + 1]
    assert tests == ci_tests
    # The same install without the test tools, then the server: what tests/servers.py starts.
    assert server == ci_tests.replace(" '.[test]' ", " . ").replace(
        ".venv/bin/pytest", ".venv/bin/gunicorn wsgi:app"
    )
    assert "skip" in first.directives


def test_every_readme_test_comment_sits_right_before_a_block_and_reads():
    lines = README.read_text(encoding="utf-8").splitlines()
    markers = [number for number, line in enumerate(lines, start=1) if MARKER.match(line)]
    marked = [block.line - 1 for block in BLOCKS if block.marker is not None]
    assert markers == marked, "a readme-test comment must be on the line right before a fence"
    for block in BLOCKS:
        if block.marker is not None:
            assert block.language in SHELLS, f"README line {block.line}: not a shell block"
            block.directives  # noqa: B018 - raises on an unknown directive


def test_commands_are_typed_as_the_install_leaves_them():
    """`.venv/bin/openreceipt`, never a bare `openreceipt`, which is not on PATH."""
    bare = re.compile(r"(?<![\w/.-])(openreceipt|gunicorn|pytest) (?=[a-z-])")
    for block in SHELL_BLOCKS:
        for line in typed_lines(block.script):
            command = line.split(" #")[0]
            assert not bare.search(command), f"README line {block.line}: {line}"
    # The settings table is written from web/config.py (tests/test_settings_table.py).
    prose = re.sub(
        r"```.*?```|<!-- settings table:.*?<!-- end of settings table -->",
        "",
        README.read_text(encoding="utf-8"),
        flags=re.S,
    )
    assert not re.findall(r"`openreceipt [^`]*`", prose)


def test_every_link_within_the_readme_names_a_heading():
    """GitHub's anchors: the heading in lower case, without punctuation, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", README.read_text(encoding="utf-8"), flags=re.S)
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links <= anchors, f"links to no heading: {sorted(links - anchors)}"


@pytest.mark.parametrize(
    "block",
    [block for block in SHELL_BLOCKS if not block.directives.get("pending")],
    ids=lambda block: f"line{block.line}",
)
def test_the_commands_shown_exist(block):
    assert not missing_commands(block.script), f"README line {block.line}"


# What runs the blocks.


@dataclass
class Outcome:
    returncode: int | None
    stdout: str
    stderr: str


class Walkthrough:
    """A reader going through the README from top to bottom in a fresh shell."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()
        (self.cwd / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        self.data = tmp / "data"
        home = tmp / "home"
        home.mkdir()
        path = [
            folder
            for folder in os.environ.get("PATH", os.defpath).split(os.pathsep)
            if folder and not (Path(folder) / "openreceipt").exists()
        ]
        self.env = {
            "PATH": os.pathsep.join(path),
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "OPENRECEIPT_DATA_DIR": str(self.data),
        }
        self.server = None
        self.outcomes = {}

    def outcome(self, block):
        """Run every runnable block up to this one, in order, once; this one's outcome."""
        for earlier in SHELL_BLOCKS:
            if earlier.line not in self.outcomes and runs(earlier):
                self.outcomes[earlier.line] = self.run(earlier)
            if earlier is block:
                return self.outcomes[block.line]

    def run(self, block):
        script = block.script
        if block.directives.get("server"):
            script = script.replace(README_SERVER, self.server_url())
        process = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # No controlling terminal: a password prompt reads the block's input, not the tty.
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(block.directives.get("input", ""), TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            return Outcome(None, stdout, stderr + f"\n(still running after {TIMEOUT} s)")
        return Outcome(process.returncode, stdout, stderr)

    def server_url(self):
        if self.server is None:
            self.server = start_gunicorn(
                self.tmp, {"DATA_DIR": self.data, "MX_LOOKUP": "off"}, workers=1
            )
        return self.server.url

    def stop(self):
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    reader = Walkthrough(tmp_path_factory.mktemp("readme"))
    yield reader
    reader.stop()


def shown_json_keys(block):
    """The keys of the JSON a block's last line shows as its answer, if it shows one."""
    last = block.text.rstrip("\n").splitlines()[-1]
    if not last.startswith("# {"):
        return None
    return re.findall(r'"(\w+)":', last)


# The blocks marked "skip: REASON" are not test cases at all (the marker test reads their
# reasons): a suite that ran is then one with nothing skipped.
RUN_BLOCKS = [block for block in SHELL_BLOCKS if "skip" not in block.directives]


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda block: f"line{block.line}")
def test_the_block_works_as_written(block, walkthrough):
    if not runs(block):
        pytest.skip(
            f"README line {block.line} waits for: {', '.join(missing_commands(block.script))}"
        )
    if "curl " in block.script and not shutil.which("curl", path=walkthrough.env["PATH"]):
        unavailable("curl is not installed")
    outcome = walkthrough.outcome(block)
    assert outcome.returncode == 0, (
        f"README line {block.line} failed ({outcome.returncode}):\n{block.script}\n"
        f"stdout:\n{outcome.stdout}\nstderr:\n{outcome.stderr}"
    )
    keys = shown_json_keys(block)
    if keys is not None:
        answer = json.loads(outcome.stdout.strip().splitlines()[-1])
        assert set(keys) <= set(answer), f"README line {block.line}: {answer}"
