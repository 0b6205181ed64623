"""Several hosts: peers and RPC workers are checked against the other host files of the inventory.

The example inventory has a head host (rig4090: a model split with rpc3090's rpc-server, and nas
as a peer). Each test breaks one thing in a private copy and asserts the problem names the file,
the line, the key path and the fix.
"""

from __future__ import annotations

import pytest
from inventory_testkit import Inventory
from test_inventory_errors import assert_line

from homelab.cli import main
from homelab.inventory import InventoryError, load_host, validate_inventory
from homelab.inventory.multihost import load_related, reachable_address, secret_names
from homelab.inventory.schema import Host


def related_error(inventory: Inventory, host: str = "rig4090") -> str:
    with pytest.raises(InventoryError) as caught:
        load_related(load_host(host, inventory.root))
    return str(caught.value)


# -- what the example inventory resolves to -------------------------------------------------------


def test_the_head_host_resolves_its_peer_and_worker(inventory: Inventory) -> None:
    related = load_related(load_host("rig4090", inventory.root))
    (peer,) = related.peers
    assert peer.name == "nas" and peer.url == "http://nas.lan:12434"
    assert peer.models == ("tiny", "nas-tiny") and peer.api_key_env == "HOMELAB_API_KEYS"
    assert related.workers == {"rpc3090": "192.168.1.31:50052"}
    assert set(related.hosts) == {"nas", "rpc3090"} and related.warnings == ()
    head = load_host("rig4090", inventory.root)
    assert head.model("think-split").rpc_workers == ("rpc3090",) and head.depends_on == ("rpc3090",)
    assert secret_names(head, related.peers) == ["HOMELAB_API_KEYS"]


def test_a_host_naming_no_other_host_reads_nothing_more(inventory: Inventory) -> None:
    related = load_related(load_host("xtx", inventory.root))
    assert related.peers == () and related.workers == {} and related.hosts == {}


def test_without_a_models_subset_every_name_the_peer_serves_is_forwarded(inventory: Inventory) -> None:
    inventory.edit_host("rig4090", "    models: [tiny, nas-tiny]\n", "")
    (peer,) = load_related(load_host("rig4090", inventory.root)).peers
    assert peer.models == ("tiny", "tiny:chat", "tiny:thinking", "nas-tiny")


def test_a_router_peer_has_no_profile_ids(inventory: Inventory) -> None:
    inventory.edit_host("nas", "  kind: supervisor", "  kind: router")
    inventory.edit_host("rig4090", "    models: [tiny, nas-tiny]\n", "")
    (peer,) = load_related(load_host("rig4090", inventory.root)).peers
    assert peer.models == ("tiny", "nas-tiny")


def test_an_explicit_key_variable_wins(inventory: Inventory) -> None:
    inventory.edit_host("rig4090", "  - host: nas ", "  - api_key_env: NAS_KEY\n    host: nas ")
    related = load_related(load_host("rig4090", inventory.root))
    assert related.peers[0].api_key_env == "NAS_KEY"
    assert secret_names(related.host, related.peers) == ["HOMELAB_API_KEYS", "NAS_KEY"]


# -- errors, each with file:line ------------------------------------------------------------------


def test_unknown_peer_names_the_nearest_host(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "  - host: nas ", "  - host: nass ")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("rig4090"), line, "peers[0].host: unknown host 'nass'", "did you mean 'nas'?")


def test_unknown_rpc_worker_names_the_nearest_host(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "rpc: [rpc3090]", "rpc: [rpc309]")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("rig4090"), line, "models[1].rpc[0]: unknown host 'rpc309'", "'rpc3090'")


def test_a_host_cannot_be_its_own_peer_or_worker(inventory: Inventory) -> None:
    peer_line = inventory.edit_host("rig4090", "  - host: nas ", "  - host: rig4090 ")
    rpc_line = inventory.edit_host("rig4090", "rpc: [rpc3090]", "rpc: [rig4090]")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("rig4090"), peer_line, "peers[0].host", "cannot be its own peer")
    assert_line(message, inventory.host_path("rig4090"), rpc_line, "models[1].rpc[0]", "cannot be its own RPC worker")


def test_a_worker_without_rpc_server_says_what_to_add(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "rpc: [rpc3090]", "rpc: [xtx]")
    message = related_error(inventory)
    assert_line(
        message, inventory.host_path("rig4090"), line, "models[1].rpc[0]: host 'xtx' runs no rpc-server",
        "rpc_server: {listen:",
    )


def test_a_worker_listed_twice_is_an_error(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "rpc: [rpc3090]", "rpc: [rpc3090, rpc3090]")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("rig4090"), line, "models[1].rpc[1]", "listed twice")


def test_a_peer_listening_on_loopback_on_another_machine_is_unreachable(inventory: Inventory) -> None:
    inventory.edit_host("nas", "listen: 0.0.0.0:12434", "listen: 127.0.0.1:12434")
    line = inventory.edit_host("rig4090", "  - host: nas ", "  - host: nas ")
    message = related_error(inventory)
    assert_line(
        message, inventory.host_path("rig4090"), line, "peers[0].host: host 'nas' serves its endpoint on 127.0.0.1:12434",
        "only its own machine reaches", "LAN address",
    )


def test_a_worker_bound_to_loopback_on_another_machine_is_unreachable(inventory: Inventory) -> None:
    inventory.edit_host("rpc3090", "listen: 192.168.1.31:50052", "listen: 127.0.0.1:50052")
    line = inventory.edit_host("rig4090", "rpc: [rpc3090]", "rpc: [rpc3090]")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("rig4090"), line, "models[1].rpc[0]", "runs rpc-server on 127.0.0.1:50052")


def test_loopback_is_fine_for_hosts_on_the_same_machine(inventory: Inventory) -> None:
    """Tests and one-box setups: both hosts deploy locally, so 127.0.0.1 reaches the peer."""
    inventory.edit_host("nas", "address: ssh://homelab@nas.lan\nlan_address: nas.lan\n", "")
    inventory.edit_host("nas", "listen: 0.0.0.0:12434", "listen: 127.0.0.2:12500")
    inventory.edit_host("rpc3090", "address: ssh://homelab@rpc3090.lan\nlan_address: 192.168.1.31\n", "")
    inventory.edit_host("rpc3090", "listen: 192.168.1.31:50052", "listen: 127.0.0.1:50052")
    inventory.edit_host("rig4090", "lan_address: 192.168.1.30\n", "")
    related = load_related(load_host("rig4090", inventory.root))
    assert related.peers[0].url == "http://127.0.0.2:12500"
    assert related.workers == {"rpc3090": "127.0.0.1:50052"}


def test_reachable_address_rules() -> None:
    def host(**fields: object) -> Host:
        return Host.model_validate({"name": "h", "backend": "cpu", **fields})

    local = host()
    remote = host(address="ssh://me@box.lan:2222")
    # every interface: lan_address, else the ssh host, else (same machine) loopback
    assert reachable_address(host(address="ssh://me@box.lan", lan_address="10.0.0.5"), "0.0.0.0:1", seen_from=local, what="x") == ("10.0.0.5", None)
    assert reachable_address(remote, "0.0.0.0:1", seen_from=local, what="x") == ("box.lan", None)
    assert reachable_address(host(), "0.0.0.0:1", seen_from=local, what="x") == ("127.0.0.1", None)
    address, why = reachable_address(host(lan_address=None), "0.0.0.0:1", seen_from=remote, what="serves")
    assert address is None and why is not None and "set lan_address" in why
    # a specific address: lan_address when given, else that address
    assert reachable_address(remote, "192.168.1.9:1", seen_from=local, what="x") == ("192.168.1.9", None)
    # loopback: same machine only; a loopback listen with a LAN lan_address is a contradiction
    assert reachable_address(remote, "127.0.0.1:1", seen_from=remote, what="x") == ("127.0.0.1", None)
    assert reachable_address(host(lan_address="10.0.0.5"), "127.0.0.1:1", seen_from=local, what="x")[0] is None
    assert reachable_address(remote, "localhost:1", seen_from=local, what="x")[0] is None


def test_peer_models_must_be_names_the_peer_serves(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "    models: [tiny, nas-tiny]", "    models: [tiny,\n      tinyy]")
    message = related_error(inventory)
    assert_line(
        message, inventory.host_path("rig4090"), line + 1, "peers[0].models[1]: peer 'nas' does not serve 'tinyy'",
        "did you mean 'tiny'?",
    )


def test_a_peer_model_colliding_with_a_local_name_is_an_error(inventory: Inventory) -> None:
    inventory.edit_host("nas", "aliases: [nas-tiny]", "aliases: [nas-tiny, chat-4b]")
    line = inventory.edit_host("rig4090", "    models: [tiny, nas-tiny]", "    models: [tiny, chat-4b]")
    message = related_error(inventory)
    assert_line(
        message, inventory.host_path("rig4090"), line, "peers[0].models: peer 'nas' serves 'chat-4b'",
        "already the ID of model 'chat-4b' on this host", "ambiguous",
    )


def test_a_peer_routed_name_colliding_with_a_local_alias_is_an_error(inventory: Inventory) -> None:
    inventory.edit_host("rig4090", "    id: chat-4b\n", "    id: chat-4b\n    aliases: [nas/tiny]\n")
    message = related_error(inventory)
    assert "'nas/tiny' (peer 'nas', model 'tiny') is already an alias of model 'chat-4b'" in message


def test_a_peer_without_models_is_an_error(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "  - host: nas ", "  - host: rpc3090 ")
    inventory.edit_host("rig4090", "    models: [tiny, nas-tiny]\n", "")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("rig4090"), line, "peers[0].host: peer 'rpc3090' serves no models")


def test_router_mode_cannot_have_peers(inventory: Inventory) -> None:
    inventory.edit_host("rig4090", "  kind: supervisor", "  kind: router")
    message = related_error(inventory)
    assert "peers: runtime.kind router" in message and "supervisor or llama-swap" in message


def test_an_invalid_peer_reports_its_own_problems_too(inventory: Inventory) -> None:
    bad = inventory.edit_host("nas", "ram_mib: 32768", "ram_mib: lots")
    line = inventory.edit_host("rig4090", "  - host: nas ", "  - host: nas ")
    message = related_error(inventory)
    assert_line(message, inventory.host_path("nas"), bad, "ram_mib")
    assert_line(message, inventory.host_path("rig4090"), line, "peer 'nas' is invalid")


def test_different_llama_cpp_across_rpc_is_a_warning(inventory: Inventory) -> None:
    inventory.edit_host("rpc3090", "  ref: b11434 ", "  ref: b11500 ")
    related = load_related(load_host("rig4090", inventory.root))
    (warning,) = related.warnings
    assert "models[1].rpc[0]" in str(warning) and "b11500" in str(warning) and "same RPC protocol" in str(warning)


def test_rpc_server_port_must_not_clash_with_this_hosts_ports(inventory: Inventory) -> None:
    line = inventory.edit_host("rpc3090", "listen: 192.168.1.31:50052", "listen: 192.168.1.31:10005")
    with pytest.raises(InventoryError) as caught:
        load_host("rpc3090", inventory.root)
    assert_line(str(caught.value), inventory.host_path("rpc3090"), line, "rpc_server.listen: port 10005", "backend port window")


def test_rpc_server_refuses_every_interface_without_allow_any_address(inventory: Inventory) -> None:
    line = inventory.edit_host("rpc3090", "listen: 192.168.1.31:50052", "listen: 0.0.0.0:50052")
    with pytest.raises(InventoryError) as caught:
        load_host("rpc3090", inventory.root)
    assert_line(str(caught.value), inventory.host_path("rpc3090"), line - 2, "rpc_server", "unauthenticated", "allow_any_address")


def test_peer_key_variable_must_be_a_variable_name(inventory: Inventory) -> None:
    line = inventory.edit_host("rig4090", "  - host: nas ", "  - api_key_env: nas-key\n    host: nas ")
    with pytest.raises(InventoryError) as caught:
        load_host("rig4090", inventory.root)
    assert_line(str(caught.value), inventory.host_path("rig4090"), line, "peers[0].api_key_env", "environment variable name")


# -- homelab validate runs the cross-host checks ---------------------------------------------------


def test_validate_reports_cross_host_problems_and_warnings(inventory: Inventory, capsys: pytest.CaptureFixture[str]) -> None:
    report = validate_inventory(inventory.root)
    assert {"rig4090", "rpc3090", "nas"} <= set(report.hosts) and report.warnings == ()
    inventory.edit_host("rpc3090", "  ref: b11434 ", "  ref: b11500 ")
    assert main(["validate", "--inventory", str(inventory.root)]) == 0
    assert "homelab: warning:" in capsys.readouterr().err
    line = inventory.edit_host("rig4090", "rpc: [rpc3090]", "rpc: [xtx]")
    assert main(["validate", "--inventory", str(inventory.root)]) == 2
    err = capsys.readouterr().err
    assert f"{inventory.host_path('rig4090')}:{line}: models[1].rpc[0]: host 'xtx' runs no rpc-server" in err
    # one file named on the command line: its related hosts are still checked
    assert main(["validate", "--inventory", str(inventory.root), str(inventory.host_path("rig4090"))]) == 2


# -- build targets: workers run rpc-server, heads need GGML_RPC ------------------------------------


def test_workers_and_heads_build_the_rpc_server_target(inventory: Inventory) -> None:
    from homelab.llamacpp.configure import RPC_SERVER, plan_cmake
    from homelab.llamacpp.stage import rpc_targets

    assert rpc_targets(load_host("rpc3090", inventory.root)) == (RPC_SERVER,)
    assert rpc_targets(load_host("rig4090", inventory.root)) == (RPC_SERVER,)
    assert rpc_targets(load_host("nas", inventory.root)) == ()
    assert rpc_targets(load_host("xtx", inventory.root)) == ()
    # the target is what turns the RPC backend on in the build
    head = rpc_targets(load_host("rig4090", inventory.root))
    plan = plan_cmake(backend="cuda", build_number=11434, commit="0" * 40, targets=head)
    assert plan.defines["GGML_RPC"] == "ON" and RPC_SERVER in plan.targets
