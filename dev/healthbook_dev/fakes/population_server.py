"""A fake population service for tests and the demo: stdlib only, one ThreadingHTTPServer in a background thread
(the plumbing is :mod:`healthbook_dev.fakes.service`'s), serving a
:class:`~healthbook_dev.fakes.population.FakePopulation` (or any registry) under the HTTP contract that
:class:`~healthbook.reconcile.http.PopulationClient` speaks (docs/reconciliation.md, "HTTP contract").

Endpoints:

* ``GET /v1/citizens/{id_number}`` - ``200`` ``{"id_number", "full_name", "birth", "sex",
  "social_insurance_number"}``, ``404`` ``{"error": "citizen_not_found"}``, ``400`` ``invalid_id_number``;
* ``GET /v1/citizens/by-social-insurance/{number}`` - the same answers, ``400`` ``invalid_social_insurance_number``;
* either: ``401`` ``invalid_api_key`` when the server has an API key and ``X-Api-Key`` does not match it;
* ``/_admin/*`` - failure injection and counters for tests driven from another process
  (``POST /_admin/fail {"mode", "seconds"}``, ``POST /_admin/reset``, ``GET /_admin/stats``).

Failure injection: :meth:`FakePopulationServer.fail` (an outage of N seconds: ``5xx`` or ``timeout``).
Run standalone with ``python -m healthbook_dev.fakes.population_server --population FILE.json --port N``: the
URL is printed on stdout (one line) and the server runs until killed. Not a security boundary: bind it to
127.0.0.1 only.
Nothing is logged: request lines carry ID and social-insurance numbers.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from email.message import Message
from types import FrameType
from typing import Any, Literal
from urllib.parse import unquote

from healthbook.reconcile.matching import (
    Citizen,
    PopulationRegistry,
    PopulationUnavailable,
    id_format_ok,
    social_insurance_number_ok,
)

from healthbook_dev.fakes.population import FakePopulation
from healthbook_dev.fakes.service import Answer, FakeService, json_answer

__all__ = ["FakePopulationServer", "main"]

FailMode = Literal["5xx", "timeout"]
NOT_FOUND_CODE = "citizen_not_found"  # the same value as healthbook.reconcile.http.NOT_FOUND_CODE (stdlib only here)
_CITIZEN_PATH = "/v1/citizens/"
_SOCIAL_INSURANCE_PATH = "/v1/citizens/by-social-insurance/"


class FakePopulationServer(FakeService):
    """``with FakePopulationServer.start(population) as server: client = PopulationClient(server.url)``.

    :meth:`reset` forgets counters and injected failures; the population itself is kept."""

    _server_version = "FakePopulation/1"
    _thread_name = "fake-population"
    _max_body = 64 * 1024
    _api_prefix = "/v1/"
    _fail_modes = ("5xx", "timeout")
    _counters = ("lookups", "social_insurance_lookups", "found", "not_found", "unauthorised")

    def __init__(self, population: PopulationRegistry, *, api_key: str | None = None) -> None:
        self.population = population
        self._api_key = api_key or None
        super().__init__()

    def __repr__(self) -> str:
        state = self.url if self._server is not None else "stopped"
        return f"FakePopulationServer({state}, {self.lookups} lookups)"

    @classmethod
    def start(cls, population: PopulationRegistry, host: str = "127.0.0.1", port: int = 0,
              api_key: str | None = None) -> FakePopulationServer:
        server = cls(population, api_key=api_key)
        server._serve(host, port)
        return server

    # -- state and failure injection

    def fail(self, mode: FailMode = "5xx", seconds: float = 1.0) -> None:
        """An outage of ``seconds``: every ``/v1/`` request answers 503 (``5xx``), or hangs with no answer until
        the outage ends and then has its connection dropped (``timeout``). ``seconds=0`` ends an outage."""
        self._begin_outage(mode, seconds)

    def counts(self) -> dict[str, int]:
        """``requests`` (to ``/v1/``), ``lookups`` (reached the population, by either path),
        ``social_insurance_lookups`` (those by social-insurance number), ``found``, ``not_found``, ``unauthorised``,
        ``injected_failures``."""
        return super().counts()

    @property
    def lookups(self) -> int:
        """Lookups that reached the population (refused and failed requests excluded)."""
        return self.counts()["lookups"]

    # -- request handling (called from handler threads)

    def _route(self, method: str, path: str, headers: Message, body: bytes) -> Answer:
        by_card = path.startswith(_SOCIAL_INSURANCE_PATH)
        prefix = _SOCIAL_INSURANCE_PATH if by_card else _CITIZEN_PATH
        raw_number = path[len(prefix):] if path.startswith(prefix) else ""
        if not raw_number or "/" in raw_number:
            return json_answer(404, {"error": "not_found"})
        if method != "GET":
            return json_answer(405, {"error": "method_not_allowed"})
        return self._lookup(unquote(raw_number), by_card, headers.get("X-Api-Key"))

    def _authorised(self, presented: str | None) -> bool:
        if self._api_key is None:
            return True
        return presented is not None and secrets.compare_digest(presented.encode(), self._api_key.encode())

    def _lookup(self, number: str, by_card: bool, presented_key: str | None) -> Answer:
        if not self._authorised(presented_key):
            self._count("unauthorised")
            return json_answer(401, {"error": "invalid_api_key"})
        if by_card and not social_insurance_number_ok(number):
            return json_answer(400, {"error": "invalid_social_insurance_number"})
        if not by_card and not id_format_ok(number):
            return json_answer(400, {"error": "invalid_id_number"})
        try:
            with self._lock:  # FakePopulation is not thread-safe (its call counter)
                self._counts["lookups"] += 1
                citizen: Citizen | None
                if by_card:
                    self._counts["social_insurance_lookups"] += 1
                    citizen = self.population.lookup_by_social_insurance(number)
                else:
                    citizen = self.population.lookup(number)
        except PopulationUnavailable:  # a registry that is itself a proxy
            return json_answer(503, {"error": "service_unavailable"})
        if citizen is None:
            self._count("not_found")
            return json_answer(404, {"error": NOT_FOUND_CODE})
        self._count("found")
        return json_answer(200, asdict(citizen))

    def _admin_action(self, path: str, args: dict[str, Any]) -> bool:
        if path == "/_admin/fail":
            self.fail(args.get("mode", "5xx"), float(args.get("seconds", 1.0)))
            return True
        return super()._admin_action(path, args)


# ------------------------------------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a dumped FakePopulation until SIGTERM/SIGINT; the URL goes to stdout first, on one line."""
    parser = argparse.ArgumentParser(prog="python -m healthbook_dev.fakes.population_server",
                                     description="Serve a dumped FakePopulation over the population HTTP contract.")
    parser.add_argument("--population", required=True, metavar="FILE.json", help="written by FakePopulation.dump")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; keep it local)")
    parser.add_argument("--port", type=int, default=0, help="0 (the default) picks a free port")
    parser.add_argument("--api-key", default=None, help="require this X-Api-Key (demo only: visible in ps)")
    args = parser.parse_args(argv)

    try:
        population = FakePopulation.load(args.population)
    except (OSError, ValueError) as exc:  # FakePopulation.load's messages carry no personal data
        print(f"cannot load the population file: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            server = FakePopulationServer.start(population, args.host, args.port, api_key=args.api_key)
        except OSError as exc:
            print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        with server:
            print(server.url, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
