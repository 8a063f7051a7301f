"""What the status page calls a fetching client: the mail service for a provider's proxy, else
the browser or mail program and its system as ua-parser reads them ("Thunderbird 115, Linux")."""

import functools

from ua_parser import Parser, load_builtins


def printable(text):
    """Text without control characters (a user agent may hold NUL, which PostgreSQL refuses)."""
    return "".join(c for c in text if c.isprintable() or c == " ").strip()


CLIENT_NAMES = {
    "gmail-proxy": "Gmail",
    "gmail-prefetch": "Gmail",
    "apple-mpp": "Apple Mail",
    "yahoo-proxy": "Yahoo Mail",
    "scanner-microsoft": "Microsoft 365",
    "outlook-proxy": "Outlook.com",
    "fastmail-proxy": "Fastmail",
    "seznam-proxy": "Seznam Email",
    "rambler-proxy": "Rambler Mail",
    "ukrnet-proxy": "ukr.net mail",
    "scanner-proofpoint": "Proofpoint",
    "scanner-mimecast": "Mimecast",
    "scanner-barracuda": "Barracuda",
    "scanner-cisco": "Cisco Secure Email",
}


def user_agent_parser():
    """A ua-parser Parser with its own result cache, for one application."""
    return Parser.from_matchers(_builtin_matchers())


@functools.cache
def _builtin_matchers():
    # Compiling ua-parser's few hundred expressions takes a quarter second: once per process.
    return load_builtins()


def client_name(user_agent, source, parser):
    """A short human name for the fetching client: the mail service for proxies, else the
    browser or mail program and its system as ua-parser reads them ("Thunderbird 115, Linux")."""
    if source in CLIENT_NAMES:
        return CLIENT_NAMES[source]
    if source == "outlook":
        return "Outlook"
    if not user_agent:
        return None
    result = parser.parse(user_agent[:512])
    agent = result.user_agent
    name = None
    if agent and agent.family and agent.family != "Other":
        name = f"{agent.family} {agent.major}" if agent.major else agent.family
    system = result.os.family if result.os and result.os.family != "Other" else None
    if name and system:
        return f"{name}, {system}"
    return name or system
