"""envoy/envoy.yaml, the production gateway, validated by parsing it into Envoy's own API types
(envoy-data-plane: a misspelled field raises `Unknown field`), and kept in step with the
contract and with the embedded edge."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

from medmesh.contract import DescriptorImage
from medmesh.edge import UNCHECKED_PATHS
from medmesh.edge.app import HEALTH_PATH
from medmesh.edge.cors import EXPOSE_HEADERS
from medmesh.edge.routes import RouteTable

CONFIG = Path(__file__).resolve().parents[3] / "envoy" / "envoy.yaml"
# Every typed_config type in the file: their modules register them in the message pool on
# import, without which `Any` values cannot be unpacked ("Can't unpack unregistered type").
TYPED_CONFIG_MODULES = [
    "envoy.extensions.filters.network.http_connection_manager.v3",
    "envoy.extensions.access_loggers.stream.v3",
    "envoy.extensions.filters.http.health_check.v3",
    "envoy.extensions.filters.http.cors.v3",
    "envoy.extensions.filters.http.grpc_web.v3",
    "envoy.extensions.filters.http.header_mutation.v3",
    "envoy.extensions.filters.http.local_ratelimit.v3",
    "envoy.extensions.filters.http.ext_authz.v3",
    "envoy.extensions.filters.http.grpc_json_transcoder.v3",
    "envoy.extensions.filters.http.router.v3",
    "envoy.extensions.upstreams.http.v3",
]


@pytest.fixture(scope="module")
def bootstrap() -> Bootstrap:
    """envoy/envoy.yaml as a typed Bootstrap."""
    for module in TYPED_CONFIG_MODULES:
        importlib.import_module(f"envoy_data_plane.{module}")
    return Bootstrap.from_dict(yaml.safe_load(CONFIG.read_text()))


@pytest.fixture(scope="module")
def manager(bootstrap: Bootstrap) -> Any:
    """The listener's HttpConnectionManager."""
    [listener] = [x for x in bootstrap.static_resources.listeners if x.name == "ingress"]
    [chain] = listener.filter_chains
    [network_filter] = chain.filters
    return network_filter.typed_config.unpack()


@pytest.fixture(scope="module")
def filters(manager: Any) -> dict[str, Any]:
    """HTTP filters by name, typed."""
    return {f.name: f.typed_config.unpack() for f in manager.http_filters}


def test_a_misspelled_field_would_fail_the_parse(bootstrap: Bootstrap) -> None:
    assert bootstrap.static_resources.clusters[0].name == "auth"
    document = yaml.safe_load(CONFIG.read_text())
    document["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    with pytest.raises(KeyError, match="Unknown field"):
        Bootstrap.from_dict(document)


def test_the_filters_run_in_the_same_order_as_the_embedded_edge(manager: Any) -> None:
    assert [f.name.rsplit(".", 1)[1] for f in manager.http_filters] == [
        "health_check",
        "cors",
        "grpc_web",
        "header_mutation",
        "local_ratelimit",
        "ext_authz",
        "grpc_json_transcoder",
        "router",
    ]


def test_the_transcoder_serves_every_service_of_the_contract_like_the_edge(
    filters: dict[str, Any], image: DescriptorImage
) -> None:
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert sorted(transcoder.services) == sorted(image.service_names("medmesh."))
    assert Path(transcoder.proto_descriptor).name == image.path.name
    options = transcoder.print_options
    # The edge's output: lowerCamel names, enum names, defaults omitted, NDJSON streams.
    assert not options.preserve_proto_field_names
    assert not options.always_print_enums_as_ints
    assert not options.always_print_primitive_fields
    assert options.stream_newline_delimited
    assert transcoder.convert_grpc_status
    assert transcoder.request_validation_options.reject_unknown_query_parameters


def test_ext_authz_asks_svc_auth_and_fails_closed(
    filters: dict[str, Any], bootstrap: Bootstrap
) -> None:
    authz = filters["envoy.filters.http.ext_authz"]
    clusters = {c.name for c in bootstrap.static_resources.clusters}
    assert authz.grpc_service.envoy_grpc.cluster_name == "auth" in clusters
    assert authz.failure_mode_allow is False
    assert int(authz.status_on_error.code) == 503


def test_the_unchecked_paths_are_the_edges_table(manager: Any, filters: dict[str, Any]) -> None:
    routes = manager.route_config.virtual_hosts[0].routes
    unchecked = [
        r
        for r in routes
        if "envoy.filters.http.ext_authz" in r.typed_per_filter_config
        and r.typed_per_filter_config["envoy.filters.http.ext_authz"].unpack().disabled
    ]
    disabled = {r.match.path for r in unchecked if r.match.path}
    # Besides those paths only the web app's files (GET/HEAD; tests/unit/test_deploy_web.py).
    assert [r.name for r in unchecked if not r.match.path] == ["web-app"]
    health = filters["envoy.filters.http.health_check"]
    answered_by_envoy = {h.string_match.exact for h in health.headers if h.name == ":path"}
    assert answered_by_envoy == {HEALTH_PATH}
    assert disabled | answered_by_envoy == set(UNCHECKED_PATHS)


def test_every_rpc_routes_to_the_cluster_of_its_service_process(
    manager: Any, bootstrap: Bootstrap, image: DescriptorImage
) -> None:
    routes = manager.route_config.virtual_hosts[0].routes
    clusters = {c.name for c in bootstrap.static_resources.clusters}
    for rpc in RouteTable(image).rpcs.values():
        route = next(
            r
            for r in routes
            if r.match.path == rpc.method.path
            or (r.match.prefix and rpc.method.path.startswith(r.match.prefix))
        )
        assert route.route is not None, rpc.name
        assert route.route.cluster == rpc.upstream in clusters
        streams = rpc.method.server_streaming or rpc.method.client_streaming
        assert (route.route.timeout.total_seconds() == 0) == streams, rpc.name


def test_every_cluster_speaks_http2_with_grpc_health_checks_and_outlier_detection(
    bootstrap: Bootstrap,
) -> None:
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    for cluster in bootstrap.static_resources.clusters:
        if cluster.name == "envoy_admin":  # its own admin port, checked below
            continue
        if cluster.name == "web":  # the web app's files over HTTP/1.1, checked below
            [check] = cluster.health_checks
            assert check.http_health_check.path == HEALTH_PATH
            continue
        options = cluster.typed_extension_protocol_options[key].unpack()
        assert options.explicit_http_config.http2_protocol_options is not None, cluster.name
        [check] = cluster.health_checks
        assert check.grpc_health_check is not None, cluster.name
        assert cluster.outlier_detection.enforcing_consecutive_gateway_failure == 100


def test_cors_exposes_the_same_headers_as_the_edge(manager: Any) -> None:
    host = manager.route_config.virtual_hosts[0]
    policy = host.typed_per_filter_config["envoy.filters.http.cors"].unpack()
    assert policy.expose_headers == EXPOSE_HEADERS
    assert policy.allow_credentials is False


def test_client_sent_identity_headers_are_removed_before_authorization(
    filters: dict[str, Any],
) -> None:
    mutations = filters["envoy.filters.http.header_mutation"].mutations.request_mutations
    assert {m.remove for m in mutations} == {
        "x-medmesh-user",
        "x-medmesh-clinic",
        "x-medmesh-roles",
    }


def test_only_get_stats_prometheus_reaches_envoys_admin_interface(bootstrap: Bootstrap) -> None:
    assert bootstrap.admin.address.socket_address.address == "127.0.0.1"
    admin_port = bootstrap.admin.address.socket_address.port_value
    [stats] = [x for x in bootstrap.static_resources.listeners if x.name == "stats"]
    [chain] = stats.filter_chains
    [network_filter] = chain.filters
    manager = network_filter.typed_config.unpack()
    [host] = manager.route_config.virtual_hosts
    [route] = host.routes
    assert route.match.path == "/stats/prometheus"
    [method] = route.match.headers
    assert (method.name, method.string_match.exact) == (":method", "GET")
    [cluster] = [c for c in bootstrap.static_resources.clusters if c.name == route.route.cluster]
    [group] = cluster.load_assignment.endpoints
    [endpoint] = group.lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", admin_port)
