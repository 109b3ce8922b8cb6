"""The edge configuration renders for local use and Kubernetes, and the real Envoy accepts both."""

from __future__ import annotations

import yaml

from qrmesh.descriptors import DESCRIPTOR_SET_PATH
from qrmesh.edge import Upstream, internal_only, render_config, validate_config
from qrmesh.mesh import SERVICES


def upstreams(dns: bool) -> list[Upstream]:
    return [
        Upstream(
            name,
            f"qrmesh-{name}" if dns else "127.0.0.1",
            entry.default_port,
            entry.grpc_services(),
            dns=dns,
            http_port=entry.http_port,
        )
        for name, entry in SERVICES.items()
    ]


def test_local_config_is_valid() -> None:
    validate_config(render_config(upstreams(dns=False)))


def test_kubernetes_config_is_valid_and_routes_the_same() -> None:
    local = yaml.safe_load(render_config(upstreams(dns=False)))
    kubernetes_text = render_config(upstreams(dns=True), listen_host="0.0.0.0", descriptor_path=DESCRIPTOR_SET_PATH)
    validate_config(kubernetes_text)
    kubernetes = yaml.safe_load(kubernetes_text)

    def routes(config: dict) -> list:  # type: ignore[type-arg]
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        return manager["route_config"]["virtual_hosts"][0]["routes"]  # type: ignore[no-any-return]

    assert routes(local) == routes(kubernetes)
    assert kubernetes["static_resources"]["clusters"][0]["type"] == "STRICT_DNS"


def test_every_service_is_transcoded_and_health_checked() -> None:
    config = yaml.safe_load(render_config(upstreams(dns=False)))
    filters = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"
    ]
    transcoder = next(f for f in filters if f["name"] == "envoy.filters.http.grpc_json_transcoder")["typed_config"]
    health = next(f for f in filters if f["name"] == "envoy.filters.http.health_check")["typed_config"]
    for name, entry in SERVICES.items():
        public = {service for service in entry.grpc_services() if not internal_only(service)}
        assert public <= set(transcoder["services"])
        assert health["cluster_min_healthy_percentages"][name] == {"value": 100}
        if entry.http_port:
            assert health["cluster_min_healthy_percentages"][f"{name}-http"] == {"value": 100}
    # Internal-only services (AccessService, LinkService) are neither transcoded nor routed.
    assert "qrmesh.identity.v1.AccessService" not in transcoder["services"]
    assert "qrmesh.qr.v1.LinkService" not in transcoder["services"]
    assert "qrmesh.qr.v1.QrCodeService" in transcoder["services"]


def test_scans_go_to_the_redirect_over_http_with_the_client_address() -> None:
    config = yaml.safe_load(render_config(upstreams(dns=False), trusted_hops=1))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["xff_num_trusted_hops"] == 1
    route = next(r for r in manager["route_config"]["virtual_hosts"][0]["routes"] if r["match"].get("prefix") == "/r/")
    assert route["route"]["cluster"] == "redirect-http"
    # Only retries that cannot count a scan twice: the request never reached a redirect.
    assert route["route"]["retry_policy"]["retry_on"] == "connect-failure,refused-stream"
    header = route["request_headers_to_add"][0]["header"]
    assert header == {"key": "x-qrmesh-client-ip", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "redirect-http")
    assert cluster["health_checks"][0]["http_health_check"] == {"path": "/healthz"}
