"""A real DNS server on loopback for MX look-up tests: answers MX questions from a table,
NXDOMAIN otherwise, or stays silent (a resolver that never answers)."""

import socket
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class DNSServer:
    def __init__(self, mx=None, silent=False):
        self.mx = {name.rstrip(".").lower(): hosts for name, hosts in (mx or {}).items()}
        self.silent = silent
        self.questions = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while self._running:
            try:
                wire, peer = self._socket.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = str(question.name).rstrip(".").lower()
            self.questions.append(name)
            if self.silent:
                continue
            response = dns.message.make_response(query)
            if question.rdtype == dns.rdatatype.MX and name in self.mx:
                records = [f"{10 * (n + 1)} {host}." for n, host in enumerate(self.mx[name])]
                response.answer.append(
                    dns.rrset.from_text(question.name, 300, "IN", "MX", *records)
                )
            elif question.rdtype == dns.rdatatype.MX and name.endswith(".nomx.test"):
                pass  # the name exists, without MX records: NoAnswer
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            self._socket.sendto(response.to_wire(), peer)

    def close(self):
        self._running = False
        self._thread.join(timeout=2)
        self._socket.close()
