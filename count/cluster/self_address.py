"""Which CLUSTER_NODES entry is this node: every node is given the same list of members."""

from __future__ import annotations

import socket

import psutil

from count.config import Config, ConfigError, HostPort, parse_host_port


def _resolve(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host.strip("[]"), None)}
    except OSError:
        return set()  # a peer's name that does not resolve yet is not this node


def _local_addresses() -> set[str]:
    found = {"127.0.0.1", "::1"}
    for addresses in psutil.net_if_addrs().values():
        found.update(a.address.split("%")[0] for a in addresses
                     if a.family in (socket.AF_INET, socket.AF_INET6))
    return found


def find_self(config: Config) -> str:
    """This node's member address: the entry equal to BIND_ADDRESS, else the one entry with
    its port whose host resolves to an address of this machine (BIND_ADDRESS 0.0.0.0) or to
    the bound address itself."""
    members = config.members()
    bind = config.bind_address
    if str(bind) in members:
        return str(bind)
    wildcard = bind.host in ("0.0.0.0", "[::]", "::")
    mine = _local_addresses() if wildcard else _resolve(bind.host)
    matches = [m for m in members if parse_host_port(m).port == bind.port
               and _resolve(parse_host_port(m).host) & mine]
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(matches)
        raise ConfigError(f"CLUSTER_NODES: exactly one entry must be this node (port "
                          f"{bind.port} on an address of this machine, BIND_ADDRESS={bind}); "
                          f"found {found}")
    return matches[0]


def peer_endpoint(member: str, port: int) -> str:
    """The tcp:// endpoint of a member's inter-node port."""
    return f"tcp://{parse_host_port(member).host}:{port}"


def bind_endpoint(bind: HostPort, port: int) -> str:
    host = "*" if bind.host in ("0.0.0.0", "[::]", "::") else bind.host
    return f"tcp://{host}:{port}"
