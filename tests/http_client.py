"""One HTTP client for the suite's requests to the servers it starts: http.get() and http.post() build a new
client, and with it a TLS context that loads the CA bundle (18 ms of CPU), on every call, and the suite's
polling loops call them five times a second for minutes. Keep-alive off: every request opens its own
connection, as those calls did, so none is sent on a connection a stopped server left behind."""

from __future__ import annotations

import httpx

http = httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0))
