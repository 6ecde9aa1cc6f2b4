#!/usr/bin/env bash
# The suite as `make test` runs it: two pytest processes at once. One runs every test on the session's shared
# Ray cluster; the other runs everything else (unit tests, and tests that start clusters, servers and CLI
# processes of their own, which spend much of their time waiting on them). Each prints its own report; the
# exit status fails if either fails.
set -u
python=${1:-.venv/bin/python}
others_log=$(mktemp)
"$python" -m pytest -q -rs --durations=15 -m "not session_cluster" >"$others_log" 2>&1 &
others=$!
trap 'kill "$others" 2>/dev/null; rm -f "$others_log"' EXIT
echo "---- tests on the session cluster ----"
"$python" -m pytest -q -rs --durations=15 -m session_cluster
shared=$?
wait "$others"
own=$?
echo "---- tests with processes of their own (unit tests, their own clusters and servers) ----"
cat "$others_log"
exit $((shared != 0 || own != 0))
