"""The package stands on its own: a wheel built from the checkout and installed in a virtual
environment outside it serves the pages' stylesheet and script and builds bookmarklets, with no
file of the checkout in reach."""

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")
# Serve the assets from the installed package, as gunicorn would load it, and say where from.
SERVE = """
import web
from web import create_app
app = create_app({"GEOIP_DATABASE": "off", "PUBLIC_URL": "https://receipts.example.com"})
client = app.test_client()
for path in ("/static/style.css", "/static/live.js"):
    answer = client.get(path)
    assert answer.status_code == 200 and len(answer.data) > 500, (path, answer.status_code)
print(web.__file__)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A virtual environment outside the checkout with only the wheel of openreceipt installed;
    its dependencies come from the test environment's site-packages (added as a path only, so
    the checkout's editable install is not seen there)."""
    place = tmp_path_factory.mktemp("installed")
    # Built from a copy, so that the build leaves nothing in the checkout.
    source = place / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(place / "dist"),
            str(source),
        ],
        check=True,
        cwd=place,
    )
    [wheel] = (place / "dist").glob("openreceipt-*.whl")
    environment = place / "env"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        check=True,
        cwd=place,
    )
    return place, python, Path(site)


def test_an_installed_wheel_serves_the_pages_assets(installed):
    place, python, site = installed
    answer = subprocess.run(
        [python, "-c", SERVE], cwd=place, capture_output=True, text=True, env={"HOME": str(place)}
    )
    assert answer.returncode == 0, answer.stderr
    assert Path(answer.stdout.strip()).is_relative_to(site)  # not the checkout's web/


def test_an_installed_wheel_builds_bookmarklets(installed):
    place, python, site = installed
    environment = {
        "HOME": str(place),
        "OPENRECEIPT_DATA_DIR": str(place / "data"),
        "OPENRECEIPT_GEOIP_DATABASE": "off",
    }
    command = [python, "-c", "from web.cli import main; main()"]
    subprocess.run(
        [*command, "user", "add", "ada@example.com", "--password-stdin"],
        input="a long enough password\n",
        cwd=place,
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    )
    answer = subprocess.run(
        [*command, "bookmarklet", "ada@example.com"],
        cwd=place,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.startswith("javascript:") and "TOKEN" in answer.stdout
