"""What program a user agent names, from maintained public lists rather than our own keywords.

- Matomo's device-detector (the `device-detector` package, a port of the PHP library that
  Matomo's analytics runs on): ~900 named bots with categories, HTTP libraries, feed readers,
  mail programs ("pim") and browsers with their engines.
- The crawler-user-agents pattern list (`crawler-user-agents`, released monthly): ~600 more
  patterns for crawlers, monitors and scripts that device-detector may not name yet.
- CrawlerDetect (`crawlerdetect`, the port of JayBizzle's list) for what is left: it names more
  scripts than either, but also mail programs (Outlook for iOS, Apple Mail), so it only decides
  between "a machine" and "unrecognised", never against a program identified as a reader.

A user agent is a reader's only when device-detector positively identifies a mail program or a
browser engine and neither list names it a machine ("deny by default"). Parsing one new user
agent costs device-detector a few milliseconds, so each distinct user agent is judged once per
process and kept in a bounded cache: a fetch of a known one pays a dictionary lookup.
"""

import functools
import re
from dataclasses import dataclass

import crawleruseragents
from crawlerdetect import CrawlerDetect
from device_detector import DeviceDetector

# A bot list names it, or it is an HTTP library, feed reader or headless browser.
MACHINE = "machine"
MAIL_PROGRAM = "mail program"  # device-detector: type "pim"
BROWSER = "browser"  # device-detector: a browser (or an app's web view) that names its engine
UNRECOGNISED = "unrecognised"  # neither: nobody can vouch for it

# Client types device-detector gives programs that fetch without a person looking.
MACHINE_CLIENT_TYPES = {"library", "feed reader", "mediaplayer"}
# Browsers device-detector names that no person drives.
HEADLESS_BROWSERS = {"Headless Chrome", "PhantomJS", "Electron Headless"}
# A browser's engine as it names itself in the user agent. device-detector also guesses a
# browser's default engine from a bare platform ("Mozilla/5.0 (Linux; Android 14)" is "Android
# Browser, WebKit"): a guess is no evidence, so the engine must be in the user agent itself.
ENGINE_TOKEN = re.compile(r"AppleWebKit/|Gecko/|Trident/|Presto/|Goanna/|Edge/")
# Programs device-detector calls mail programs that fetch without a person reading: Mailpit, a
# mail-testing server, checks a message's links and images itself (https://mailpit.axllent.org/
# docs/usage/link-check/).
NOT_READERS = {"Mailpit"}
# Mail programs device-detector does not recognise yet, as ua-parser's uap-core names them
# (regexes.yaml, "Evolution"): GNOME's mail program.
MAIL_PROGRAMS = re.compile(r"^Evolution/\d")
# A browser names itself with a product token first ("Mozilla/5.0 …"), as HTTP defines it (RFC
# 9110, section 10.1.5); a string that does not (a list printed by a script) is no browser.
PRODUCT = re.compile(r"^[\w!#$%&'*+.^`|~-]+/")
CACHE_SIZE = 8192
_crawler_detect = CrawlerDetect()
# Longer user agents are judged on their first 512 characters (a pixel stores 1024 at most).
MAX_PARSED = 512


@dataclass(frozen=True)
class Program:
    """What a user agent names: its role and the name the list gave it."""

    role: str
    name: str | None = None


@functools.lru_cache(maxsize=CACHE_SIZE)
def identify(user_agent):
    """The Program a (non-empty) user agent names, judged once per distinct user agent."""
    user_agent = user_agent[:MAX_PARSED]
    # Bots and clients, not the device's brand and model: those rules are two thirds of the cost.
    # A detector of its own (check_cache=False): device-detector's cache hands every thread that
    # asks for one user agent the same detector, and parse() fills it in place. The lru_cache
    # above is the cache.
    parsed = (
        DeviceDetector(user_agent, skip_device_detection=True, check_cache=False)
        .parse()
        .all_details
    )
    bot = parsed.get("bot") or {}
    if bot:
        return Program(MACHINE, bot.get("name") or None)
    client = parsed.get("client") or {}
    client_type = str(getattr(client.get("type"), "value", client.get("type") or ""))
    name = client.get("name") or None
    if client_type in MACHINE_CLIENT_TYPES or name in HEADLESS_BROWSERS:
        return Program(MACHINE, name)
    if crawleruseragents.is_crawler(user_agent):
        return Program(MACHINE, name)
    if (client_type == "pim" and name not in NOT_READERS) or MAIL_PROGRAMS.match(user_agent):
        return Program(MAIL_PROGRAM, name)
    if (
        client_type in ("browser", "mobile app")
        and ENGINE_TOKEN.search(user_agent)
        and PRODUCT.match(user_agent)
    ):
        return Program(BROWSER, name)
    if _crawler_detect.isCrawler(user_agent):
        return Program(MACHINE, name)
    return Program(UNRECOGNISED, name)


# One user agent of each family that loads a part of device-detector's rules on first use: a
# phone, an Android web view, a desktop browser, a mail app, a library, a program no list knows,
# a mail program, a crawler. Without them the first such fetch in each worker waits for the
# rules (up to 0.7 s for the first iPhone).
WARM_UP = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 16_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 13; SM-S901B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/112.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Outlook-iOS/709.2226530.prod.iphone (3.24.1)",
    "curl/7.0",
    "openreceipt-warm-up/1.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.5.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
)


def warm_up():
    """Load the lists before the first fetch (device-detector reads its rules lazily, which
    takes a second): gunicorn.conf.py calls it before forking its workers."""
    for user_agent in WARM_UP:
        identify(user_agent)
