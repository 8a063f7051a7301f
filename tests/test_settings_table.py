"""The table of settings in web/config.py is their one description: the README's table is made
from it, every default in it is valid, and every setting in it is read somewhere."""

import re
from pathlib import Path

import pytest

from web import config

from .conftest import UPDATE_DOCS

ROOT = Path(__file__).resolve().parent.parent
START = "<!-- settings table:"
END = "<!-- end of settings table -->"

# config.py turns these settings into something else, which is what the rest of the code reads.
READ_AS = {
    "SESSION_DAYS": "permanent_session_lifetime",  # PERMANENT_SESSION_LIFETIME: web/ui/signin.py
    "SMTP_URL": 'config["SMTP"]',  # taken apart into SMTP: web/notifications/
    "BIND": "server_bind()",  # gunicorn.conf.py
}


def readme_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("-->", text.index(START)) + len("-->")
    return text[start : text.index(END, start)].strip()


def test_the_readme_table_is_generated_from_the_settings():
    if UPDATE_DOCS:
        readme = ROOT / "README.md"
        text = readme.read_text(encoding="utf-8")
        readme.write_text(text.replace(readme_table(), config.markdown_table().strip()), "utf-8")
    assert readme_table() == config.markdown_table().strip(), (
        "README.md's table of settings differs from OPTIONS in web/config.py: edit the "
        "descriptions there, then write the table with: "
        "UPDATE_DOCS=1 .venv/bin/pytest tests/test_settings_table.py"
    )


def test_internal_settings_are_left_out_of_the_readme():
    table = readme_table()
    for option in config.OPTIONS:
        assert (f"`{option.variable}`" in table) == option.documented, option.name


@pytest.mark.parametrize("option", config.OPTIONS, ids=lambda option: option.name)
def test_every_default_is_valid(option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # DATA_DIR's default is a directory it creates
    option.read(option.default)


@pytest.mark.parametrize("option", config.OPTIONS, ids=lambda option: option.name)
def test_every_setting_is_known_to_the_environment_check(option, monkeypatch):
    monkeypatch.setenv(option.variable, "1")
    config.reject_unknown_environment()


def test_every_setting_is_read_somewhere():
    """No dead switch: each setting is read outside config.py, as "NAME" (config["NAME"],
    config.get("NAME", ...)) or as what config.py makes of it."""
    sources = [ROOT / "gunicorn.conf.py", *sorted((ROOT / "web").rglob("*.py"))]
    code = "\n".join(
        path.read_text(encoding="utf-8") for path in sources if path != ROOT / "web" / "config.py"
    )
    names = [option.name for option in config.OPTIONS]
    names += [variable for variable, _default, _meaning in config.OTHER_VARIABLES]
    unread = []
    for name in names:
        if name in READ_AS:
            found = READ_AS[name] in code
        else:
            found = re.search(rf"""["']{name}["']""", code) is not None
        if not found:
            unread.append(name)
    assert not unread, f"settings nothing reads (dead switches): {', '.join(unread)}"
