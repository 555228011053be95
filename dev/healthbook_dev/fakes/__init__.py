"""Fake VNeID and population services (stdlib HTTP servers) for tests and the demos: never deployed."""
