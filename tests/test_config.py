"""Settings: defaults, environment, overrides, and one clear line for every wrong value."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from web import create_app
from web.config import ConfigError, local_url, server_bind

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_make_a_working_sqlite_app(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = create_app({"GEOIP_DATABASE": "off"})
    assert app.config["DATA_DIR"] == str(tmp_path / "instance")
    assert app.config["DATABASE_URL"] == f"sqlite:///{tmp_path / 'instance' / 'openreceipt.db'}"
    assert (tmp_path / "instance" / "openreceipt.db").exists()
    assert app.config["TRUSTED_PROXIES"] == 0 and app.config["PUBLIC_URL"] is None


def test_sqlite_runs_in_wal_mode(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off"})
    with app.app_context():
        database = app.extensions["openreceipt.database"]
        assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_secret_key_is_generated_once_private_and_reused(tmp_path):
    first = create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off"})
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    second = create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off"})
    assert first.config["SECRET_KEY"] == second.config["SECRET_KEY"] == key_file.read_text().strip()
    assert len(first.config["SECRET_KEY"]) >= 48


def test_environment_then_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRECEIPT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OPENRECEIPT_TRUSTED_PROXIES", "2")
    monkeypatch.setenv("OPENRECEIPT_PUBLIC_URL", "https://t.example.org/")
    monkeypatch.setenv("OPENRECEIPT_SECRET_KEY_FALLBACKS", "old-one, older-one")
    monkeypatch.setenv("OPENRECEIPT_GEOIP_DATABASE", "off")
    app = create_app({"TRUSTED_PROXIES": 1})
    assert app.config["TRUSTED_PROXIES"] == 1  # the mapping wins over the environment
    assert app.config["PUBLIC_URL"] == "https://t.example.org"
    assert app.config["SECRET_KEY_FALLBACKS"] == ["old-one", "older-one"]
    assert app.config["SESSION_COOKIE_SECURE"] is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"TRUSTED_PROXIES": "two"}, "OPENRECEIPT_TRUSTED_PROXIES must be a whole number"),
        ({"TRUSTED_PROXIES": -1}, "OPENRECEIPT_TRUSTED_PROXIES must be a whole number"),
        ({"TRUSTED_PROXIES": True}, "OPENRECEIPT_TRUSTED_PROXIES must be a whole number"),
        ({"PUBLIC_URL": "receipts.example.com"}, "OPENRECEIPT_PUBLIC_URL must look like"),
        ({"PUBLIC_URL": "https://x.example/?a=1"}, "OPENRECEIPT_PUBLIC_URL must look like"),
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "OPENRECEIPT_DATABASE_URL must start with"),
        (
            {"GEOIP_DATABASE": "/nonexistent/City.mmdb"},
            "OPENRECEIPT_GEOIP_DATABASE /nonexistent/City.mmdb does not exist",
        ),
        (
            {"DATA_DIR": "/proc/openreceipt"},
            "OPENRECEIPT_DATA_DIR /proc/openreceipt cannot be created",
        ),
        ({"MX_LOOKUP": "sometimes"}, "OPENRECEIPT_MX_LOOKUP must be on or off"),
        ({"DNS_SERVERS": "resolver.example"}, "OPENRECEIPT_DNS_SERVERS must list addresses"),
    ],
    ids=[
        "proxies-word",
        "proxies-negative",
        "proxies-bool",
        "url-scheme",
        "url-query",
        "db-scheme",
        "geoip-missing",
        "data-dir",
        "mx-switch",
        "dns-servers",
    ],
)
def test_wrong_settings_stop_with_one_clear_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as raised:
        create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off", **overrides})
    assert message in raised.value.message
    assert "\n" not in str(raised.value)


def test_a_file_that_is_not_a_geoip_database_is_refused(tmp_path):
    junk = tmp_path / "junk.mmdb"
    junk.write_bytes(b"not a database")
    with pytest.raises(ConfigError, match="cannot be read"):
        create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": str(junk)})


def test_misspelt_environment_setting_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENRECEIPT_TRUSTED_PROXY", "1")
    with pytest.raises(ConfigError) as raised:
        create_app({"DATA_DIR": str(tmp_path), "GEOIP_DATABASE": "off"})
    assert raised.value.message == (
        "unknown setting OPENRECEIPT_TRUSTED_PROXY (did you mean OPENRECEIPT_TRUSTED_PROXIES?)"
    )


def test_gunicorn_start_up_with_a_wrong_setting_prints_one_line(tmp_path):
    env = {
        **os.environ,
        "OPENRECEIPT_DATA_DIR": str(tmp_path),
        "OPENRECEIPT_TRUSTED_PROXIES": "many",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        "openreceipt: OPENRECEIPT_TRUSTED_PROXIES must be a whole number >= 0, got 'many'"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("environ", "bind", "url"),
    [
        ({}, "127.0.0.1:8000", "http://127.0.0.1:8000"),
        ({"PORT": "5000"}, "0.0.0.0:5000", "http://localhost:5000"),
        ({"OPENRECEIPT_BIND": "[::]:9000", "PORT": "5000"}, "[::]:9000", "http://localhost:9000"),
        (
            {"OPENRECEIPT_BIND": "unix:/run/openreceipt.sock"},
            "unix:/run/openreceipt.sock",
            "http://localhost",
        ),
    ],
    ids=["default", "port", "bind-wins", "unix"],
)
def test_server_bind(environ, bind, url):
    assert server_bind(environ) == bind
    assert local_url(bind) == url
