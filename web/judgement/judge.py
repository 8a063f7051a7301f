"""The judgement of this server, built once at start-up: what a fetch of a pixel or of a tracked
link was (classify.judge, clicks.judge_click), and the name of the client that made it."""

import functools

from .classify import Fetch, classify, judge
from .clicks import judge_click
from .clients import client_name, printable

CLIENT_NAMES_CACHED = 4096  # (user agent, source) pairs: 4 MB at most (user agents are cut to 1 KB)
# (user agent, network, method, purpose) of pixel fetches: 4 MB at most, as above.
REQUESTS_CLASSIFIED_CACHED = 4096


class Judge:
    """The judgement of this server, built once at start-up: the classifier with the networks
    it knows, the user-agent parser that names clients, and the operator's choices (whether the
    recipients' mail hosting counts, whether clients are named at all)."""

    def __init__(self, networks, parser, use_mail_hosting=True, name_clients=True):
        self.networks = networks
        self.parser = parser
        self.use_mail_hosting = use_mail_hosting
        self.name_clients = name_clients
        # Mail is fetched by a few clients over and over: each name is worked out once, and so
        # is what a request says of its fetcher (classify() reads nothing else: the ranges are
        # loaded once, at start-up).
        self._client_names = functools.lru_cache(maxsize=CLIENT_NAMES_CACHED)(self._client_name)
        self._classified = functools.lru_cache(maxsize=REQUESTS_CLASSIFIED_CACHED)(self._classify)

    def verdict(self, fetch, facts, now):
        """The Verdict for a fetch of a pixel (or of one of its tracked links) whose facts are
        `facts`, arriving at `now`."""
        if fetch.link_id is not None:
            return judge_click(fetch, facts, self.networks, now)
        classified = self._classified(fetch.user_agent, fetch.ip, fetch.method, fetch.purpose)
        return judge(
            fetch, facts, self.networks, now, fetch.browser, self.use_mail_hosting, classified
        )

    def _classify(self, user_agent, ip, method, purpose):
        request = Fetch(user_agent=user_agent, ip=ip, method=method, purpose=purpose)
        return classify(request, self.networks)

    def client(self, user_agent, source):
        """The client's name as stored with the event (short, printable), or None."""
        if not self.name_clients:
            return None
        return self._client_names(user_agent, source)

    def _client_name(self, user_agent, source):
        return printable(client_name(user_agent, source, self.parser) or "")[:100] or None
