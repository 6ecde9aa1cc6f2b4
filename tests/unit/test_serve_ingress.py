"""The ingress settings Serve is started with, and the wrapper that keeps HAProxy's side listeners on loopback,
checked against the config Ray's own HAProxy template renders. No cluster."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rayline.config import ServeConfig
from rayline.serve import ingress


def test_haproxy_is_the_default_and_gets_its_own_files_ports_and_wrapper():
    assert ServeConfig().ingress == "haproxy"
    env = ingress.controller_options(ServeConfig(port=8555))["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "rayline-haproxy-8555" in env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]
    assert env["RAY_SERVE_HAPROXY_STATS_PORT"] != "8404" and env["RAY_SERVE_HAPROXY_METRICS_PORT"] != "9101"
    assert env[ingress.BINARY_ENV].startswith(str(Path(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent))
    assert env["RAY_SERVE_CONTROLLER_CALLBACK_IMPORT_PATH"] == ingress.CALLBACK
    assert ingress.proxy_location(ServeConfig()) == "HeadOnly"


def test_proxy_ingress_leaves_serve_as_it_is():
    cfg = ServeConfig(ingress="proxy")
    assert ingress.controller_options(cfg) is None and ingress.proxy_location(cfg) is None
    ingress.check_ingress(cfg)  # needs no HAProxy


def test_a_missing_haproxy_is_refused_naming_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setattr(ingress, "find_haproxy", lambda: None)
    monkeypatch.setenv(ingress.BINARY_ENV, str(tmp_path / "haproxy"))
    with pytest.raises(ingress.IngressError, match=r"serve\.ingress: proxy"):
        ingress.check_ingress(ServeConfig())
    with pytest.raises(ingress.IngressError, match=r"serve\.ingress: proxy"):
        ingress.install_haproxy_wrapper()


def test_the_controller_callback_writes_an_executable_wrapper(tmp_path, monkeypatch):
    target = tmp_path / "state" / "haproxy"
    monkeypatch.setenv(ingress.BINARY_ENV, str(target))
    monkeypatch.setattr(ingress, "find_haproxy", lambda: "/opt/ha proxy's/haproxy")
    ingress.install_haproxy_wrapper()
    assert target.stat().st_mode & 0o111
    assert "exec '/opt/ha proxy'\\''s/haproxy' \"$@\"" in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["haproxy"], "no partial file is left"


def rays_config(tmp_path: Path, host: str) -> Path:
    """The config file Serve's HAProxy manager writes for an endpoint on host:8000, with no replicas yet."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host=host, port=8000),
        stats_port=18404,
        metrics_port=19101,
        socket_path=str(tmp_path / "admin.sock"),
        server_state_base=str(tmp_path),
        server_state_file=str(tmp_path / "server-state"),
        metrics_socket_path=str(tmp_path / "metrics.sock"),
        is_head=True,
    )
    api = HAProxyApi(cfg=cfg, config_file_path=str(tmp_path / "haproxy.cfg"))
    api._generate_config_file_internal()
    return Path(api.config_file_path)


def binds(config: Path) -> dict[int, str]:
    """port -> address of every TCP bind line."""
    found = re.findall(r"^\s*bind\s+(\S*):(\d+)", config.read_text(), flags=re.MULTILINE)
    return {int(port): address for address, port in found}


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_the_wrapper_moves_rays_side_listeners_to_loopback_and_keeps_the_endpoint(tmp_path, host):
    config = rays_config(tmp_path, host)
    assert binds(config) == {8000: "127.0.0.1" if host == "127.0.0.1" else "*", 18404: "*", 19101: ""}, (
        "Ray's template changed: check what the wrapper rewrites"
    )
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(ingress.wrapper_script("/bin/echo", str(tmp_path / "limits")))
    wrapper.chmod(0o755)
    args = ["-db", "-f", str(config), "-dR", "-sf", "123", "-x", str(tmp_path / "admin.sock")]
    ran = subprocess.run([str(wrapper), *args], capture_output=True, text=True, check=True)
    assert ran.stdout.split() == args, "the real binary gets Ray's arguments unchanged"
    endpoint = "127.0.0.1" if host == "127.0.0.1" else "*"
    assert binds(config) == {8000: endpoint, 18404: "127.0.0.1", 19101: "127.0.0.1"}


def test_the_wrapper_refuses_to_run_haproxy_without_a_config_file(tmp_path):
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(ingress.wrapper_script("/bin/echo", str(tmp_path / "limits")))
    wrapper.chmod(0o755)
    ran = subprocess.run([str(wrapper), "-db"], capture_output=True, text=True)
    assert ran.returncode == 2 and "no -f CONFIG" in ran.stderr


@pytest.mark.parametrize(
    ("kind", "host", "nodes", "warned"),
    [
        ("haproxy", "127.0.0.1", 2, True),
        ("haproxy", "::1", 3, True),
        ("haproxy", "localhost", 2, True),
        ("haproxy", "127.0.0.1", 1, False),
        ("haproxy", "0.0.0.0", 2, False),
        ("haproxy", "10.0.0.5", 2, False),
        ("proxy", "127.0.0.1", 2, False),
    ],
)
def test_haproxy_on_a_loopback_host_of_a_multi_node_cluster_is_warned_about(kind, host, nodes, warned):
    warning = ingress.head_only_warning(ServeConfig(ingress=kind, host=host), nodes)
    assert (warning is not None) == warned
    if warned:
        assert "serve.ingress: proxy" in warning and f"{nodes} nodes" in warning


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_free():
    """A server port asked of the kernel can be taken as an outgoing connection's source port before the server
    listens (seen as HAProxy's "Address already in use" with two Ray clusters busy on one machine)."""
    import socket
    from pathlib import Path

    from rayline.runtime import LISTEN_PORTS, free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(p in LISTEN_PORTS and p < low for p in ports), (sorted(ports), low)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


RAYS_BACKENDS = """
backend http-main
    log global
    http-reuse always
    option httpchk GET /-/healthz
    http-check expect status 200
    default-server fastinter 250ms downinter 250ms fall 2 rise 2 inter 5s check
    server SERVE_REPLICA_main-ModelServer-twvhe5e2 127.0.0.1:30005 check observe layer4 error-limit 3 on-error mark-down
    server SERVE_REPLICA_main-ModelServer-a81kd0s1 127.0.0.1:30006 check observe layer4 error-limit 3 on-error mark-down
    server SERVE_PROXY_ACTOR-fallback-706c6acce29 127.0.0.1:31200 check backup
backend http-other
    log global
    server SERVE_REPLICA_other-ModelServer-n46w8ni6 127.0.0.1:30000 check
"""
"""Two backends as Ray 2.60's template renders them (copied from a running endpoint's haproxy.cfg)."""


def test_overload_limits_reach_haproxy_through_the_wrapper(tmp_path, monkeypatch):
    """A replica writes its app's limits; the wrapper gives that backend's replicas (not the fallback proxy) their
    maxconn and the backend its queue timeout and refusal, leaves other backends alone, and HAProxy accepts it."""
    real = ingress.find_haproxy()
    if real is None:
        pytest.skip("no HAProxy binary here (ray[serve] on Linux bundles one)")
    config = rays_config(tmp_path, "127.0.0.1")
    config.write_text(config.read_text() + RAYS_BACKENDS)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv(ingress.STATE_ENV, str(tmp_path))
    cfg = ServeConfig(max_ongoing_requests=8, max_queued_requests=20, retry_after_s=1.5, request_timeout_s=12.5)
    ingress.write_backend_limits("main", cfg)
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(ingress.wrapper_script(real, ingress.limits_folder(str(tmp_path))))
    wrapper.chmod(0o755)
    checked = subprocess.run([str(wrapper), "-c", "-f", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = [line.strip() for line in config.read_text().splitlines()]
    main = lines[lines.index("backend http-main") : lines.index("backend http-other")]
    servers = [line for line in main if line.startswith("server ")]
    assert [s.endswith(" maxconn 8") for s in servers] == [True, True, False], "the fallback proxy has no limit"
    assert "timeout queue 13s" in main
    refusal = [line for line in main if line.startswith("http-request return status 503")]
    assert len(refusal) == 1 and refusal[0].endswith("hdr Retry-After 2 if { avg_queue() ge 20 }"), refusal
    assert '\\"error\\":\\"overloaded: 20 requests already wait for each replica; retry in 2 s\\"' in refusal[0]
    other = lines[lines.index("backend http-other") :]
    assert not [line for line in other if "maxconn" in line or line.startswith(("timeout queue", "http-request"))]


def test_no_queue_leaves_refusing_to_the_replica(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv(ingress.STATE_ENV, str(tmp_path))
    ingress.write_backend_limits("a/b#c d", ServeConfig())
    written = Path(ingress.limits_folder(str(tmp_path))) / "http-a.b-c_d"
    assert written.read_text().splitlines()[0] == "64", "named as Serve names the app's backend"
    ingress.write_backend_limits("a/b#c d", ServeConfig(max_queued_requests=0))
    assert not written.exists()
    assert ingress.backend_limits(ServeConfig(max_queued_requests=-1))[1:] == ["timeout queue 30s"], "no refusal"
