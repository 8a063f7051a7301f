"""A real DNS server on loopback for MX look-up tests: answers MX questions from a table,
NXDOMAIN otherwise, or stays silent (a resolver that never answers), or holds its answers until
the test releases them (a resolver that answers late)."""

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DNSServer:
    def __init__(self, mx=None, silent=False, hold=False):
        self.mx = {name.rstrip(".").lower(): hosts for name, hosts in (mx or {}).items()}
        self.silent = silent
        self.questions = []
        self.answered = 0
        # With `hold`, the questions wait here, (query, peer) each, until release().
        self._held = [] if hold else None
        self._released = threading.Event()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def release(self):
        """Answer the questions held so far (within the server's next tenth of a second), and
        every one from now on."""
        self._released.set()

    def _serve(self):
        while self._running:
            if self._held and self._released.is_set():
                self._answer(*self._held.pop(0))
                continue
            try:
                wire, peer = self._socket.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(wire)
            self.questions.append(str(query.question[0].name).rstrip(".").lower())
            if self.silent:
                continue
            if self._held is not None and not self._released.is_set():
                self._held.append((query, peer))
                continue
            self._answer(query, peer)

    def _answer(self, query, peer):
        question = query.question[0]
        name = str(question.name).rstrip(".").lower()
        response = dns.message.make_response(query)
        if question.rdtype == dns.rdatatype.MX and name in self.mx:
            records = [f"{10 * (n + 1)} {host}." for n, host in enumerate(self.mx[name])]
            response.answer.append(dns.rrset.from_text(question.name, 300, "IN", "MX", *records))
        elif question.rdtype == dns.rdatatype.MX and name.endswith(".nomx.test"):
            pass  # the name exists, without MX records: NoAnswer
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        self._socket.sendto(response.to_wire(), peer)
        self.answered += 1

    def close(self):
        self._running = False
        self._thread.join(timeout=2)
        assert not self._thread.is_alive()
        self._socket.close()
