"""Fuzzing with Hypothesis, on SQLite and PostgreSQL: the pixel answers its GIF to any request and
stores nothing it should not; the API answers any malformed request with a JSON error, never a 500.

Requests go in as a WSGI server hands them over (PATH_INFO and header values are latin-1 text
holding whatever bytes came in), which Werkzeug's test client would refuse to send. Failures print
the falsifying example and a @reproduce_failure blob; no example database is written to the repo.
The @example lines are failures the fuzzing found, kept so that they fail on every run.
"""

import ipaddress
import json
import string
from urllib.parse import quote

import hypothesis
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import strategies as st
from peewee import CharField
from werkzeug.test import EnvironBuilder, run_wsgi_app

from web import create_app
from web.pixel.endpoint import GIF
from web.privacy import anonymize
from web.receipts.minting import MAX_ADDRESS, MAX_LABEL, MAX_RECIPIENTS, MAX_SUBJECT
from web.signing import PixelSigner
from web.storage.models import Event, Pixel
from web.vocabulary import KINDS

from .helpers import csrf_token, mint, pixel_path, sign_in


def fuzz(examples):
    """Hypothesis settings for these tests: few enough examples to keep both databases under a
    minute together; the fixtures' app and rows are shared by the examples of one test."""
    return hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
MAC_MAIL = "Mail/3774.600.62 CFNetwork/1498.700.2 Darwin/23.6.0"
AGENTS = (
    GMAIL_PROXY,
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246",
    "Mozilla/5.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
    "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    MAC_MAIL,
    "curl/8.5.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "",
)
# A fuzzer's dictionary: strings that broke parsers before, mixed into the random ones.
NASTY = (
    "\x00",
    "%00",
    "\ud800",
    "\udfff",
    "\uffff",
    "\U0010ffff",
    "\u202e",
    "\r\n",
    "\t",
    "=",
    "==",
    ".",
    "..",
    "/",
    "//",
    "../",
    "%2F",
    "%",
    "%zz",
    "?",
    "#",
    ";",
    ",",
    "\\",
    ".gif",
    "\xff\xfe",
    "é",
    "𝔘𝔫𝔦",
    " ",
)


def as_header(text):
    """A header value as the app gets it: the UTF-8 bytes of `text` (latin-1 text stays as it
    is), one character a byte. CR and LF end a header line, so no server passes them on."""
    try:
        value = text.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        value = text.encode("utf-8", "surrogatepass").decode("latin-1")
    return value.replace("\r", " ").replace("\n", " ")


nasty = st.sampled_from(NASTY)
surrogates = st.integers(0xD800, 0xDFFF).map(chr)
any_text = st.text(st.characters() | surrogates, max_size=60)
# Header values as a WSGI server passes them on: any bytes, read as latin-1.
latin1 = st.binary(max_size=80).map(lambda raw: as_header(raw.decode("latin-1")))
utf8_as_latin1 = st.text(max_size=60).map(lambda text: text.encode().decode("latin-1"))


def junk(min_size=0):
    parts = st.one_of(nasty, any_text, latin1, utf8_as_latin1)
    return st.lists(parts, min_size=min_size, max_size=4).map("".join)


def repeated(seeds, longest):
    """Up to `longest` characters of one seed repeated: huge values without huge examples."""
    return st.builds(
        lambda seed, size: (seed * (size // len(seed) + 1))[:size],
        seeds.filter(bool),
        st.integers(0, longest),
    )


def spliced(bases, insert):
    """A real-looking value with junk put in at some place."""

    def splice(base, junk_text, at):
        at %= len(base) + 1
        return base[:at] + junk_text + base[at:]

    return st.builds(splice, bases, insert, st.integers(0, 500))


user_agents = st.one_of(
    st.sampled_from(AGENTS),
    spliced(st.sampled_from(AGENTS), junk(min_size=1)),
    latin1,
    utf8_as_latin1,
    repeated(st.sampled_from(AGENTS) | latin1, 100_000),
).map(as_header)
purposes = st.one_of(
    st.sampled_from(["prefetch", "prerender", "preview", "prefetch;anonymous-client-ip"]),
    junk(),
).map(as_header)


def address_entries():
    """X-Forwarded-For entries as (text, the raw address in it or None)."""
    v4 = st.ip_addresses(v=4)
    v6 = st.ip_addresses(v=6)
    zones = st.text(string.ascii_letters + string.digits + "%", min_size=1, max_size=8)
    ports = st.integers(0, 99_999)
    return st.one_of(
        v4.map(lambda ip: (str(ip), ip)),
        v6.map(lambda ip: (str(ip), ip)),
        v6.map(lambda ip: (ip.exploded.upper(), ip)),
        st.builds(lambda ip, zone: (f"{ip}%{zone}", ip), v6, zones),
        st.builds(lambda ip, port: (f"[{ip}]:{port}", ip), v6, ports),
        st.builds(lambda ip, zone, port: (f"[{ip}%{zone}]:{port}", ip), v6, zones, ports),
        st.builds(lambda ip, port: (f"{ip}:{port}", ip), v4, ports),
        v4.map(lambda ip: (f"::ffff:{ip}", ip)),
        v4.map(lambda ip: (f"2002:{ip.packed.hex()[:4]}:{ip.packed.hex()[4:]}::1", ip)),
        st.builds(lambda ip, space: (f"{space}{ip}{space}", ip), v4 | v6, st.sampled_from(" \t")),
        junk().map(lambda text: (as_header(text).replace(",", ""), None)),
    )


forwarded_for = st.one_of(
    st.lists(address_entries(), max_size=30),
    # Hundreds of entries: a long spoofed prefix before the hop the proxy wrote.
    st.builds(
        lambda filler, count, last: [filler] * count + last,
        address_entries(),
        st.integers(100, 500),
        st.lists(address_entries(), max_size=3),
    ),
)
separators = st.sampled_from([",", ", ", " , ", ",\t"])
header_names = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=30)


def other_headers():
    """Everything but User-Agent, the prefetch hints and X-Forwarded-For: junk of any kind."""
    named = st.fixed_dictionaries(
        {},
        optional={
            name: junk().map(as_header)
            for name in (
                "Accept",
                "Accept-Language",
                "Accept-Encoding",
                "Cookie",
                "Referer",
                "Via",
                "Host",
                "Forwarded",
                "X-Real-IP",
                "X-Forwarded-Proto",
                "X-Forwarded-Host",
                "X-Forwarded-Port",
                "X-Forwarded-Prefix",
                "Content-Type",
                "Content-Length",
                "If-None-Match",
                "Range",
            )
        },
    )
    extra = st.dictionaries(header_names, latin1, max_size=5)
    return st.builds(lambda a, b: {**b, **a}, named, extra)


prefetch_hints = st.fixed_dictionaries(
    {},
    optional={name: purposes for name in ("Purpose", "Sec-Purpose", "X-Purpose", "X-Moz")},
)
remote_addrs = st.one_of(
    st.ip_addresses().map(lambda ip: (str(ip), ip)),
    st.just((None, None)),
    junk().map(lambda text: (as_header(text), None)),
)


def environ_key(name):
    upper = name.upper().replace("-", "_")
    return upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{upper}"


def wsgi_request(app, method="GET", path="/", headers=None, remote_addr="127.0.0.1", query=""):
    """One request as a WSGI server would hand it over; returns (status, headers, body)."""
    environ = EnvironBuilder(method=method).get_environ()
    uri = f"{path}?{query}" if query else path
    environ.update(PATH_INFO=path, QUERY_STRING=query, REQUEST_URI=uri, RAW_URI=uri)
    if remote_addr is not None:
        environ["REMOTE_ADDR"] = remote_addr
    for name, value in (headers or {}).items():
        environ[environ_key(name)] = value
    app_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), response_headers, b"".join(app_iter)


def latin1_path(text):
    """PATH_INFO for a path sent as UTF-8 bytes (lone surrogates as they would be encoded)."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def assert_gif(status, headers, body, method):
    """The one answer a mail client may get. Returns what X-Openreceipt says happened."""
    assert status == 200, (status, headers.get("Location"), body[:200])
    assert headers.get("Content-Type") == "image/gif"
    assert body == (b"" if method == "HEAD" else GIF)
    assert headers.get("Content-Length") == str(len(GIF))
    assert "Set-Cookie" not in headers
    outcome = headers.get("X-Openreceipt", "")
    assert outcome.startswith(("recorded: ", "not recorded: ", "spooled: ")), outcome
    # A fuzzed request is refused or recorded, never a failure of the server.
    assert outcome not in ("not recorded: 500", "not recorded: server error"), outcome
    return outcome


def event_count(app):
    with app.app_context():
        return Event.select().count()


@pytest.fixture
def served_app(app):
    """The app as a production server runs it: an exception is answered (a 500), not raised."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    return app


@pytest.fixture
def minted(client, auth):
    return mint(client, auth, subject="Invoice #42", recipients=["bob@example.com"])


# --- the pixel: any path -------------------------------------------------------------------

path_segments = st.one_of(junk(), st.just(""), repeated(st.sampled_from("Aa9-_.%/") | latin1, 9000))
pixel_paths = st.one_of(
    st.lists(path_segments, max_size=5).map(lambda parts: latin1_path("/p/" + "/".join(parts))),
    # Percent-encoded junk the server left encoded, and raw bytes it did not decode as UTF-8.
    junk().map(lambda text: "/p/" + quote(text.encode("utf-8", "surrogatepass"), safe="/%")),
    st.binary(max_size=80).map(lambda raw: "/p/" + raw.decode("latin-1")),
)


@fuzz(200)
@given(path=pixel_paths, method=st.sampled_from(["GET", "HEAD"]))
@example(path="/p//x", method="GET")  # Werkzeug merges the slashes with a 308 redirect page
def test_pixel_answers_its_gif_on_any_path(served_app, path, method):
    before = event_count(served_app)
    assert_gif(*wsgi_request(served_app, method, path), method)
    assert event_count(served_app) == before


# --- the pixel: any token, any headers -----------------------------------------------------


def mutate(token, mutation):
    """A token changed the way a mangling mail client, a forger or a fuzzer would change it."""
    kind, *args = mutation
    if kind == "append":
        return token + args[0]
    if kind == "truncate":
        return token[: len(token) - 1 - args[0] % len(token)]
    position = args[0] % len(token)
    if kind == "flip":
        return token[:position] + chr(ord(token[position]) ^ 1 << args[1]) + token[position + 1 :]
    if kind == "replace":
        return token[:position] + args[1] + token[position + 1 :]
    if kind == "insert":
        return token[:position] + args[1] + token[position:]
    raise AssertionError(kind)


positions = st.integers(0, 200)
mutations = st.one_of(
    st.tuples(st.just("append"), junk(min_size=1)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("flip"), positions, st.integers(0, 7)),
    st.tuples(st.just("replace"), positions, st.characters(max_codepoint=0x7F) | nasty),
    st.tuples(st.just("insert"), positions, junk(min_size=1)),
)
public_ids = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=32)
tokens = st.one_of(
    st.tuples(st.just("mutated"), mutations),
    st.tuples(st.just("random"), junk(min_size=1)),
    st.tuples(
        st.just("random"), repeated(st.sampled_from(string.ascii_letters + ".") | junk(), 5000)
    ),
    st.tuples(st.just("foreign key"), st.text(min_size=1, max_size=20)),
    st.tuples(st.just("unknown pixel"), public_ids),
)


def make_token(app, genuine, public_id, variant):
    kind, argument = variant
    if kind == "mutated":
        return mutate(genuine, argument)
    if kind == "foreign key":
        return PixelSigner(argument).sign(public_id)
    if kind == "unknown pixel":
        return app.extensions["openreceipt"].signer.sign(argument)
    return argument


@fuzz(150)
@given(
    variant=tokens,
    suffix=st.sampled_from([".gif", ""]),
    method=st.sampled_from(["GET", "HEAD"]),
    agent=user_agents,
    hints=prefetch_hints,
    headers=other_headers(),
    remote_addr=remote_addrs,
)
def test_pixel_answers_its_gif_to_any_token_and_stores_only_genuine_ones(
    served_app, minted, variant, suffix, method, agent, hints, headers, remote_addr
):
    genuine = pixel_path(minted["url"])[len("/p/") : -len(".gif")]
    # Leading slashes are test_pixel_answers_its_gif_on_any_path's.
    token = make_token(served_app, genuine, minted["id"], variant).lstrip("/") or "x"
    before = event_count(served_app)
    answer = wsgi_request(
        served_app,
        method,
        latin1_path(f"/p/{token}{suffix}"),
        {"User-Agent": agent, **hints, **headers},
        remote_addr[0],
    )
    outcome = assert_gif(*answer, method)
    # The signer is the judge of genuine tokens (test_signer_accepts_only_the_tokens_it_issued
    # judges the signer); a token it refuses, or one for another pixel, stores nothing.
    seen = (token + suffix).removesuffix(".gif")
    if served_app.extensions["openreceipt"].signer.unsign(seen) != minted["id"]:
        assert outcome.startswith("not recorded"), outcome
        assert event_count(served_app) == before


@fuzz(500)
@given(public_id=public_ids, key=st.text(min_size=1, max_size=20), mutation=mutations)
# itsdangerous decodes base64 leniently: padding, and characters outside the alphabet, are
# skipped ("=", two NULs), "+" and "/" read as "-" and "_", the last character has 2 spare bits.
@example(public_id="AbHLsXLFz8B9VIMO", key="k", mutation=("append", "="))
def test_signer_accepts_only_the_tokens_it_issued(public_id, key, mutation):
    signer = PixelSigner(key)
    token = signer.sign(public_id)
    mutated = mutate(token, mutation)
    assert mutated == token or signer.unsign(mutated) is None, (token, mutated)


# --- the pixel: genuine tokens with junk headers, behind one trusted proxy --------------------

EVENT_LIMITS = {
    field.name: field.max_length
    for field in Event._meta.sorted_fields
    if isinstance(field, CharField)
}


@pytest.fixture
def proxied_app(app, settings):
    """The app behind one reverse proxy (TRUSTED_PROXIES=1), on the fixtures' database; made
    after `app`, so that the models use its connection."""
    proxied = create_app({**settings, "TRUSTED_PROXIES": 1})
    proxied.config["PROPAGATE_EXCEPTIONS"] = False
    yield proxied
    database = proxied.extensions["openreceipt.database"]
    database.close_all()


@pytest.fixture
def proxied_pixel(proxied_app, auth):
    body = mint(proxied_app.test_client(), auth, subject="Invoice #42")
    return body["id"], pixel_path(body["url"])


def is_masked(ip):
    """Whether a stored address is a network address: an IPv4 /24 or an IPv6 /48."""
    address = ipaddress.ip_address(ip)
    prefix = 24 if address.version == 4 else 48
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return str(network.network_address) == ip


def spellings(ip):
    """How a raw address could be written down; nothing when it is its own mask."""
    carried = (ip.ipv4_mapped or ip.sixtofour) if ip.version == 6 else None
    if anonymize(str(ip)) == str(carried or ip):
        return set()
    forms = {str(ip), ip.exploded}
    if carried is not None:
        forms.add(str(carried))
    return forms


def assert_storable(value, field, limit=None):
    if value is None:
        return
    assert isinstance(value, str), (field, value)
    assert "\x00" not in value, f"{field} holds a NUL character: {value!r}"
    value.encode("utf-8")  # no lone surrogates
    if limit is not None:
        assert len(value) <= limit, (field, len(value), limit)


def fetch_genuine(app, path, method, headers, remote_addr):
    """Fetch a genuine pixel; returns the events it stored (none, or one)."""
    with app.app_context():
        last = Event.select(Event.id).order_by(Event.id.desc()).scalar() or 0
    outcome = assert_gif(*wsgi_request(app, method, path, headers, remote_addr), method)
    with app.app_context():
        stored = list(Event.select().where(Event.id > last))
    if outcome.startswith("not recorded: "):
        # A repeat, or a request Werkzeug refuses (a Host that is no host name: 400). With the
        # database up, nothing else keeps a genuine fetch from being recorded.
        refusal = outcome.removeprefix("not recorded: ")
        assert refusal == "repeat of a fetch seconds ago" or refusal in ("400", "404"), outcome
        assert stored == []
    else:
        assert outcome.removeprefix("recorded: ") in KINDS, outcome
        assert [event.kind for event in stored] == [outcome.removeprefix("recorded: ")]
    for event in stored:
        assert event.kind in KINDS
        for field, limit in EVENT_LIMITS.items():
            assert_storable(getattr(event, field), field, limit)
        assert event.ip is None or is_masked(event.ip), event.ip
    return stored


@fuzz(100)
@given(
    entries=forwarded_for,
    separator=separators,
    remote_addr=remote_addrs,
    method=st.sampled_from(["GET", "HEAD"]),
    agent=user_agents,
    headers=other_headers(),
)
def test_genuine_fetch_stores_only_a_masked_address(
    proxied_app, proxied_pixel, entries, separator, remote_addr, method, agent, headers
):
    public_id, path = proxied_pixel
    forwarded = separator.join(text for text, _ in entries)
    stored = fetch_genuine(
        proxied_app,
        path,
        method,
        {**headers, "User-Agent": agent, "X-Forwarded-For": forwarded},
        remote_addr[0],
    )
    # The stored mask is that of an address the request carried, or nothing.
    carried = [part.strip() for part in forwarded.split(",")] + [remote_addr[0]]
    for event in stored:
        assert event.ip in {anonymize(text) for text in carried}, (event.ip, forwarded)
    raw = {ip for _, ip in entries if ip is not None} | {remote_addr[1]} - {None}
    forms = {form for ip in raw for form in spellings(ip) if form not in agent}
    with proxied_app.app_context():
        rows = [
            *Event.select().where(Event.pixel == Pixel.get(Pixel.public_id == public_id)).dicts(),
            *Pixel.select().where(Pixel.public_id == public_id).dicts(),
        ]
    for row in rows:
        for field, value in row.items():
            if field == "ip":
                assert value not in forms, f"raw address {value!r} stored in event.ip"
            elif isinstance(value, str):
                leaked = [form for form in forms if form in value]
                assert not leaked, f"raw address {leaked} stored in {field}: {value!r}"


@fuzz(100)
@given(
    agent=user_agents,
    hints=prefetch_hints,
    method=st.sampled_from(["GET", "HEAD"]),
    suffix=st.sampled_from([".gif", ""]),
    remote_addr=remote_addrs,
)
# ua-parser names such a client after whatever precedes "/<digits> CFNetwork", NUL included: on
# SQLite the NUL is stored, PostgreSQL refuses the row.
@example(
    agent="Ma\x00il/3774 CFNetwork/1498.700.2 Darwin/23.6.0",
    hints={},
    method="GET",
    suffix=".gif",
    remote_addr=("81.2.69.160", None),
)
def test_genuine_fetch_stores_only_storable_text(
    proxied_app, proxied_pixel, agent, hints, method, suffix, remote_addr
):
    _, path = proxied_pixel
    path = path.removesuffix(".gif") + suffix
    fetch_genuine(proxied_app, path, method, {"User-Agent": agent, **hints}, remote_addr[0])


# --- the API -------------------------------------------------------------------------------


def assert_json_answer(status, content_type, body):
    """Below 500, and an error answer is JSON {"error": "..."}. Returns the parsed body.
    Redirects are Werkzeug's (a path with "//" in it) and say nothing about the API."""
    assert status < 500, (status, body[:300])
    if 300 <= status < 400 or (status < 400 and not body):
        return None
    assert content_type == "application/json", (status, content_type, body[:300])
    answer = json.loads(body)
    if status >= 400:
        assert isinstance(answer, dict), answer
        assert isinstance(answer.get("error"), str) and answer["error"], answer
    return answer


def api_call(client, method, path, body=b"", headers=None):
    response = client.open(path, method=method, data=body, headers=headers or {})
    return response.status_code, response.mimetype, response.get_data()


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
    nasty,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(any_text | nasty, children, max_size=5)
    ),
    max_leaves=20,
)
recipients = st.one_of(
    st.emails().map(str),
    spliced(st.emails().map(str), junk(min_size=1)),
    st.builds(lambda name, email: f"{name} <{email}>", any_text, st.emails().map(str)),
    json_values,
)
huge_strings = repeated(st.sampled_from("x é\x00") | any_text, 200_000)
text_values = st.one_of(any_text, spliced(st.just("Invoice #42"), junk(min_size=1)), huge_strings)
api_objects = st.fixed_dictionaries(
    {},
    optional={
        "subject": text_values | json_values,
        "label": text_values | json_values,
        "recipients": st.lists(recipients, max_size=MAX_RECIPIENTS + 5) | json_values,
        "force": st.booleans() | json_values,
        "kind": st.sampled_from(KINDS) | json_values,
    },
).flatmap(
    lambda fields: st.dictionaries(any_text, json_values, max_size=3).map(
        lambda extra: {**extra, **fields}
    )
)


def encoded(value, ensure_ascii, encoding):
    text = json.dumps(value, ensure_ascii=ensure_ascii, allow_nan=True)
    return text.encode(encoding, "surrogatepass")


def deeply_nested(depth, brackets, closed):
    opening, closing = brackets
    return (opening * depth + (closing * depth if closed else "")).encode()


request_bodies = st.one_of(
    st.builds(
        encoded,
        api_objects | json_values,
        st.booleans(),
        st.sampled_from(["utf-8", "utf-16", "utf-32", "utf-16-be"]),
    ),
    st.binary(max_size=200),  # invalid UTF-8 and anything else
    junk().map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.just(b""),
    st.builds(
        deeply_nested,
        st.integers(1, 200) | st.integers(900, 50_000),
        st.sampled_from([("[", "]"), ('{"a":', "}")]),
        st.booleans(),
    ),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=latin-1", "text/plain", "", None]
)


def body_headers(auth, content_type):
    return {**auth, "Content-Type": content_type} if content_type is not None else dict(auth)


@fuzz(150)
@given(body=request_bodies, content_type=content_types)
# json.loads raises RecursionError, which is no ValueError, past ~1000 levels of nesting.
@example(body=b"[" * 5000, content_type="application/json")
def test_minting_never_fails_and_stores_only_storable_text(
    served_app, client, auth, body, content_type
):
    status, mimetype, data = api_call(
        client, "POST", "/api/pixels", body, body_headers(auth, content_type)
    )
    answer = assert_json_answer(status, mimetype, data)
    if status == 201:
        with served_app.app_context():
            pixel = Pixel.get(Pixel.public_id == answer["id"])
        assert_storable(pixel.subject, "subject", MAX_SUBJECT)
        assert_storable(pixel.label, "label", MAX_LABEL)
        assert len(pixel.recipients) <= MAX_RECIPIENTS
        for address in pixel.recipients:
            assert_storable(address, "recipients", MAX_ADDRESS)


segment_text = st.one_of(junk(min_size=1), public_ids, st.sampled_from(["%00", "\x00"]))


def url_segment(text):
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


@fuzz(150)
@given(
    action=st.sampled_from(["sent", "self-view"]),
    target=st.one_of(st.just(None), segment_text),
    body=request_bodies,
    content_type=content_types,
)
@example(action="sent", target="\x00", body=b"{}", content_type=None)  # PostgreSQL: NUL in a query
@example(action="sent", target=None, body=b"[" * 5000, content_type=None)  # RecursionError
def test_pixel_actions_never_fail(
    client, served_app, auth, minted, action, target, body, content_type
):
    segment = url_segment(minted["id"] if target is None else target)
    assert_json_answer(
        *api_call(
            client,
            "POST",
            f"/api/pixels/{segment}/{action}",
            body,
            body_headers(auth, content_type),
        )
    )


@pytest.fixture
def event_id(served_app, client, minted):
    client.get(pixel_path(minted["url"]), headers={"User-Agent": GMAIL_PROXY})
    with served_app.app_context():
        return Event.get().id


@fuzz(100)
@given(
    target=st.one_of(st.just(None), st.integers(-(2**80), 2**80), segment_text),
    body=request_bodies,
    content_type=content_types,
)
# SQLite: "Python int too large to convert to SQLite INTEGER".
@example(target=2**70, body=b'{"kind": "open"}', content_type=None)
@example(target=None, body=b"[" * 5000, content_type=None)  # RecursionError
def test_event_corrections_never_fail(client, auth, event_id, target, body, content_type):
    segment = url_segment(str(event_id if target is None else target))
    assert_json_answer(
        *api_call(
            client, "POST", f"/api/events/{segment}/kind", body, body_headers(auth, content_type)
        )
    )


numbers = st.one_of(
    st.integers(-(10**9), 10**9).map(str),
    st.integers(0, 10_000).map(lambda size: "9" * size),  # past int()'s 4300-digit limit
    st.sampled_from(["", " 1", "1 ", "+1", "-1", "1e3", "0x10", "١٢", "²", "1.5", "0" * 50]),
    junk(),
)
query_values = st.one_of(numbers, junk())
# A request target is printable ASCII (RFC 9112; gunicorn refuses anything else): junk in a query
# string arrives percent-encoded, or as the ASCII punctuation that needs none.
raw_queries = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80),
    junk().map(lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="&=%+;,/?")),
)


@fuzz(100)
@given(
    pairs=st.lists(
        st.tuples(st.sampled_from(["page", "per_page"]) | any_text, query_values), max_size=4
    ),
    raw=st.none() | raw_queries,
)
@example(pairs=[("page", "9" * 5000)], raw=None)  # int() refuses more than 4300 digits
def test_listing_never_fails(served_app, auth, pairs, raw):
    if raw is None:
        query = "&".join(f"{url_segment(name)}={url_segment(value)}" for name, value in pairs)
    else:
        query = raw
    status, headers, body = wsgi_request(served_app, "GET", "/api/pixels", auth, query=query)
    assert_json_answer(status, headers.get("Content-Type", "").split(";")[0], body)


@fuzz(100)
@given(
    authorization=st.one_of(
        junk(),
        latin1,
        st.builds(
            lambda scheme, token: f"{scheme} {token}",
            st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", ""]),
            junk(),
        ),
        st.builds(lambda token: f"Bearer or_{token}", junk()),
        repeated(st.just("Bearer or_") | latin1, 100_000),
    ).map(as_header),
    valid_prefix=st.booleans(),
    headers=st.fixed_dictionaries(
        {},
        optional={
            "X-Openreceipt-Bookmarklet": junk().map(as_header),
            "Origin": junk().map(as_header),
            "User-Agent": user_agents,
        },
    ),
    endpoint=st.sampled_from(
        [("GET", "/api/pixels"), ("POST", "/api/pixels"), ("POST", "/api/pixels/x/sent")]
    ),
)
def test_authorization_never_fails(
    served_app, auth, authorization, valid_prefix, headers, endpoint
):
    method, path = endpoint
    if valid_prefix:
        # A live token with junk after it.
        authorization = auth["Authorization"] + authorization
    status, response_headers, body = wsgi_request(
        served_app, method, path, {**headers, "Authorization": authorization}
    )
    assert_json_answer(status, response_headers.get("Content-Type", "").split(";")[0], body)


# --- the pages: every form field and query string ----------------------------------------------

# Form text as a browser sends it: any character a page could hold, NUL and controls included
# (browsers send them; lone surrogates cannot be sent as UTF-8, so they are left out).
form_text = st.one_of(
    nasty.filter(
        lambda text: text.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == text
    ),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60),
    st.text(st.sampled_from("\x00\x01\x1f\x7f\u2028 <>&\"'%@,;"), max_size=12),
)
# Each signed-in form, with the fields it reads ({id} is a receipt of the user's).
FORMS = {
    "/bookmarklet": ("name",),
    "/bookmarklet/pixel": ("subject", "recipients"),
    "/bookmarklet/tokens/1/rename": ("name",),
    "/settings/tokens": ("name",),
    "/settings/password": ("current", "password", "confirm"),
    "/settings/notify": ("opens", "quiet", "delivered"),
    "/settings/channels": ("kind", "target", "token"),
    "/settings/dnt": ("entries",),
    "/m/{id}/events/1/kind": ("kind",),
    "/m/{id}/sent": (),
    "/login?next={next}": ("email", "password"),
}
PAGES = (
    "/",
    "/live/receipts",
    "/m/{id}",
    "/live/m/{id}",
    "/settings",
    "/bookmarklet",
    "/login",
    "/privacy",
    "/settings/export.json",
)


def assert_page_answer(status, body):
    """Any answer but a server error: a page, a redirect, or a clear 4xx."""
    assert status < 500, (status, body[:300])


@fuzz(60)
@given(
    form=st.sampled_from(sorted(FORMS)),
    values=st.lists(form_text, min_size=3, max_size=3),
    next_path=form_text,
)
@example(form="/settings/channels", values=["webhook", "http://a\x00b/", ""], next_path="/")
@example(form="/login?next={next}", values=["ada\x00@example.com", "x", ""], next_path="/\t/e")
def test_every_form_answers_any_text_without_a_server_error(
    served_app, client, minted, form, values, next_path
):
    sign_in(client)
    token = csrf_token(client.get("/settings"))
    path = form.format(id=minted["id"], next=quote(next_path))
    data = dict(zip(FORMS[form], values, strict=False))
    answer = client.post(path, data={**data, "csrf_token": token})
    assert_page_answer(answer.status_code, answer.get_data())
    assert b"CSRF" not in answer.get_data()  # the form was read, not refused at the door


@fuzz(60)
@given(page=st.sampled_from(PAGES), raw=raw_queries)
@example(page="/settings", raw="")
@example(page="/", raw="q=a%00b")
@example(page="/m/{id}", raw="before=" + "9" * 5000)
def test_every_page_answers_any_query_without_a_server_error(served_app, client, minted, page, raw):
    sign_in(client)
    name = served_app.config["SESSION_COOKIE_NAME"]
    headers = {"Cookie": f"{name}={client.get_cookie(name).value}"}
    status, _, body = wsgi_request(
        served_app, "GET", page.format(id=minted["id"]), headers, query=raw
    )
    assert_page_answer(status, body)
    if page == "/settings" and not raw:
        assert status == 200  # signed in: the fuzzing reaches the pages, not the sign-in form
