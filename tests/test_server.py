"""End to end through a real gunicorn: mint, fetch behind a proxy, read back, and find the raw
client address nowhere on disk."""

import json
import shutil
import socket
import subprocess

import pytest

pytestmark = pytest.mark.slow

GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
RAW = "81.2.69.160"


def files_under(directory):
    return [path for path in directory.rglob("*") if path.is_file()]


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
def test_raw_address_is_stored_and_logged_nowhere(request, tmp_path, gunicorn, backend):
    settings = {"TRUSTED_PROXIES": 1}
    if backend == "postgresql":
        settings["DATABASE_URL"] = request.getfixturevalue("postgresql_url")
    # Listening on 127.0.0.2 and connecting from 127.0.0.3 tells the server's own address (kept
    # in its log) from a client's (masked).
    server = gunicorn(host="127.0.0.2", **settings)
    server.openreceipt(
        "user", "add", "ada@example.com", "--password-stdin", input="correct horse battery\n"
    )
    token = server.openreceipt("token", "new", "ada@example.com", "--name", "e2e")
    auth = {"Authorization": f"Bearer {token}"}

    status, _, body = server.request("POST", "/api/pixels", {"subject": "Invoice #42"}, auth)
    assert status == 201
    minted = json.loads(body)
    assert minted["url"].startswith(server.url + "/p/")
    path = minted["url"][len(server.url) :]

    status, headers, image = server.request(
        "GET", path, headers={"User-Agent": GMAIL_PROXY, "X-Forwarded-For": RAW}
    )
    assert (status, headers["Content-Type"], image[:6]) == (200, "image/gif", b"GIF89a")
    assert headers["X-Openreceipt"] == "recorded: open"
    assert "Set-Cookie" not in headers

    # A request gunicorn itself rejects: its log line names the peer, which must come out masked.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), source_address=("127.0.0.3", 0)) as client:
        client.sendall(b"BOGUS\r\n\r\n")
        client.recv(1024)

    status, _, body = server.request("GET", f"/api/pixels/{minted['id']}", headers=auth)
    detail = json.loads(body)
    [event] = detail["events"]
    assert (event["ip"], event["country"], event["city"], event["kind"]) == (
        "81.2.69.0",
        "GB",
        "London",
        "open",
    )
    server.stop()

    logs = server.log_bytes()
    assert b"Invalid request from ip=127.0.0.0: Invalid HTTP request line" in logs
    assert b"127.0.0.3" not in logs
    assert f"Listening at: {server.url}".encode() in logs
    assert b"GET /p/" in logs  # the access log is on, and still says nothing of the client

    haystacks = {str(path): path.read_bytes() for path in files_under(tmp_path)}
    if backend == "postgresql":
        haystacks["pg_dump"] = postgresql_dump(server.env["OPENRECEIPT_DATABASE_URL"])
        assert b"81.2.69.0" in haystacks["pg_dump"]
    else:
        database = tmp_path / "data" / "openreceipt.db"
        assert b"81.2.69.0" in database.read_bytes()  # the masked address is there...
    leaks = [name for name, content in haystacks.items() if RAW.encode() in content]
    assert leaks == []  # ...and the raw one nowhere


def postgresql_dump(url):
    from urllib.parse import parse_qs, unquote, urlsplit

    if shutil.which("pg_dump") is None:
        pytest.fail("pg_dump is needed to search the PostgreSQL data")
    parts = urlsplit(url)
    schema = unquote(parse_qs(parts.query)["options"][0]).split("=", 1)[1]
    plain = parts._replace(query="").geturl()
    return subprocess.run(
        ["pg_dump", "--data-only", "--schema", schema, plain],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def test_real_server_answers_huge_headers_with_a_gif(gunicorn):
    server = gunicorn()
    headers = {
        "User-Agent": "Mozilla/5.0 " + "x" * 30_000,
        "Cookie": "session=" + "c" * 60_000,
        "X-Forwarded-For": ", ".join(f"10.0.{n // 256}.{n % 256}" for n in range(2_000)),
    }
    for path in ("/p/garbage.gif", "/p/" + "A" * 8_000 + ".gif"):
        status, response_headers, image = server.request("GET", path, headers=headers)
        assert (status, response_headers["Content-Type"], image[:6]) == (
            200,
            "image/gif",
            b"GIF89a",
        )
