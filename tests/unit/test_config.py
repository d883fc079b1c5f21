"""Unit tests for count.config: defaults, validation, ranges, aliases, the settings table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from count.config import (
    SETTINGS,
    Config,
    ConfigError,
    HostPort,
    load_config,
    parse_host_port,
    settings_table,
)

SETTING_NAMES = [s.name for s in SETTINGS]
RANGED = [s for s in SETTINGS if s.low is not None or s.high is not None]

# At least one bad value for every setting; test_every_setting_has_bad_values keeps this
# table complete when a setting is added.
BAD_VALUES: dict[str, list[str]] = {
    "NODE_ID": ["", "  ", "-1", "a b", "node!", "x" * 64, "_leading", "1 5", "pod/1"],
    "CLUSTER_ENABLED": ["maybe", "2", "tru", "enabled"],
    "CLUSTER_NODES": ["nohost", "a:1,b", "a:0", "a:65536", ":8080", "a:", "a:x", "a b:1"],
    "REPLICATION_FACTOR": ["", "two", "1.5", "0x2", "2e0"],
    "BIND_ADDRESS": ["", "localhost", "127.0.0.1", ":8080", "h:0", "h:65536", "h:-1",
                     "h:80a", "h o:80", "[zz::1]:80"],
    "DATA_DIR": ["", "   "],
    "MEMORY_BUFFER_SIZE": ["", "lots", "1e4", "10 000"],
    "FLUSH_INTERVAL_SECONDS": ["", "5s", "1.5"],
    "LOG_LEVEL": ["verbose", "count=loud", "=debug", "info,chatty"],
    "HTTP_WORKERS": ["", "many"],
    "HTTP_THREADS": ["", "four"],
    "REQUEST_TIMEOUT_MS": ["", "5000ms"],
    "MAX_BODY_BYTES": ["", "16MiB"],
    "MAX_BATCH_POINTS": ["", "1k"],
    "MAX_SERIES_NAME_LENGTH": ["", "long"],
    "MAX_QUERY_POINTS": ["", "10M"],
    "LMDB_MAP_SIZE_MB": ["", "1G"],
    "CLUSTER_PORT_OFFSET": ["0", "30000", "x"],
    "HEARTBEAT_INTERVAL_MS": ["10", "1s", ""],
    "FAILURE_TIMEOUT_MS": ["100", "-1"],
    "REPLICA_TIMEOUT_MS": ["10", "2s"],
    "REPLICA_RETRIES": ["-1", "11"],
    "MAX_HINT_WINDOW_SECONDS": ["-1", "3h"],
    "ANTI_ENTROPY_INTERVAL_SECONDS": ["-5", "1m"],
    "CLEANUP_INTERVAL_SECONDS": ["-1", "10s"],
    "STREAM_THROUGHPUT_POINTS": ["-1", "fast"],
}

BAD_CASES = [(name, value) for name, values in BAD_VALUES.items() for value in values]


def _setting(name: str):
    return next(s for s in SETTINGS if s.name == name)


# -- defaults --------------------------------------------------------------------------------


def test_defaults_are_a_single_node():
    config = load_config({})
    assert config.node_id == 1
    assert isinstance(config.node_id, int)
    assert config.bind_address == HostPort("127.0.0.1", 8080)
    assert str(config.bind_address) == "127.0.0.1:8080"
    assert config.data_dir == "./count_data"
    assert config.memory_buffer_size == 10000
    assert config.flush_interval_seconds == 300
    assert config.replication_factor == 2
    assert config.cluster_enabled is False
    assert config.cluster_nodes == ()
    assert config.log_level == "info"


def test_defaults_are_within_their_own_ranges():
    # Every default must itself be a valid value (load_config({}) would fail otherwise),
    # and every Config field is filled from exactly one setting.
    config = load_config({})
    assert {s.field for s in SETTINGS} == {f.name for f in dataclasses.fields(Config)}
    for s in RANGED:
        value = getattr(config, s.field)
        assert s.low <= value <= s.high, s.name


def test_config_is_frozen():
    config = load_config({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node_id = 2  # type: ignore[misc]


def test_unrelated_environment_variables_are_ignored():
    assert load_config({"PATH": "/bin", "HOME": "/root", "COUNT_X": "?"}) == load_config({})


# -- bad values ------------------------------------------------------------------------------


def test_every_setting_has_bad_values():
    assert set(BAD_VALUES) == set(SETTING_NAMES)


@pytest.mark.parametrize(("name", "value"), BAD_CASES)
def test_bad_value_raises_config_error_naming_the_variable(name, value):
    env = {name: value}
    if name == "CLUSTER_ENABLED":
        env["CLUSTER_NODES"] = "a:1"
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert str(info.value).startswith(name + ":"), str(info.value)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("setting", RANGED, ids=lambda s: s.name)
def test_range_bounds(setting):
    assert getattr(load_config({setting.name: str(setting.low)}), setting.field) == setting.low
    assert getattr(load_config({setting.name: str(setting.high)}), setting.field) == setting.high
    with pytest.raises(ConfigError) as below:
        load_config({setting.name: str(setting.low - 1)})
    assert str(below.value).startswith(setting.name + ":")
    assert "below the minimum" in str(below.value)
    with pytest.raises(ConfigError) as above:
        load_config({setting.name: str(setting.high + 1)})
    assert str(above.value).startswith(setting.name + ":")
    assert "above the maximum" in str(above.value)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_value_in_range_is_accepted(data):
    setting = data.draw(st.sampled_from(RANGED))
    value = data.draw(st.integers(setting.low, setting.high))
    spelled = data.draw(st.sampled_from([str(value), f" {value} ", f"+{value}"]))
    assert getattr(load_config({setting.name: spelled}), setting.field) == value


def test_integers_accept_underscores_and_surrounding_space():
    config = load_config({"MEMORY_BUFFER_SIZE": " 20_000 ", "MAX_BATCH_POINTS": "1_000"})
    assert config.memory_buffer_size == 20000
    assert config.max_batch_points == 1000


def test_negative_integer_is_below_range():
    with pytest.raises(ConfigError, match=r"^FLUSH_INTERVAL_SECONDS: -5 is below the minimum 1"):
        load_config({"FLUSH_INTERVAL_SECONDS": "-5"})


# -- NODE_ID ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("0", 0), ("42", 42), (" 7 ", 7),
                                               ("007", 7), ("123456789012", 123456789012)])
def test_numeric_node_id_is_an_int(raw, expected):
    node_id = load_config({"NODE_ID": raw}).node_id
    assert node_id == expected
    assert type(node_id) is int


@pytest.mark.parametrize("raw", ["count-cluster-2", "node_a", "n1.example.com", "A", "2b",
                                 "x" * 63])
def test_named_node_id_is_a_str(raw):
    node_id = load_config({"NODE_ID": raw}).node_id
    assert node_id == raw
    assert type(node_id) is str


def test_named_node_id_is_stripped():
    assert load_config({"NODE_ID": "  count-cluster-0\n"}).node_id == "count-cluster-0"


# -- addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:8080", "127.0.0.1", 8080),
    ("0.0.0.0:1", "0.0.0.0", 1),
    ("count-0.count.svc:65535", "count-0.count.svc", 65535),
    ("[::1]:9000", "[::1]", 9000),
    ("[fe80::1:2]:80", "[fe80::1:2]", 80),
    (" localhost:8081 ", "localhost", 8081),
])
def test_parse_host_port(text, host, port):
    assert parse_host_port(text) == HostPort(host, port)
    assert str(parse_host_port(text)) == f"{host}:{port}"


def test_bind_address_ipv6():
    assert load_config({"BIND_ADDRESS": "[::]:8080"}).bind_address == HostPort("[::]", 8080)


@pytest.mark.parametrize(("text", "expected"), [
    ("", ()),
    (" ", ()),
    ("a:1", (HostPort("a", 1),)),
    ("a:1,b:2", (HostPort("a", 1), HostPort("b", 2))),
    (" a:1 , b:2 ,", (HostPort("a", 1), HostPort("b", 2))),
    ("a:1,,[::1]:3", (HostPort("a", 1), HostPort("[::1]", 3))),
    ("10.0.0.1:8080,10.0.0.2:8080,10.0.0.3:8080",
     tuple(HostPort(f"10.0.0.{i}", 8080) for i in (1, 2, 3))),
])
def test_cluster_nodes_parsing(text, expected):
    assert load_config({"CLUSTER_NODES": text}).cluster_nodes == expected


def test_cluster_nodes_error_names_the_bad_entry():
    with pytest.raises(ConfigError) as info:
        load_config({"CLUSTER_NODES": "a:1,broken,c:3"})
    assert str(info.value).startswith("CLUSTER_NODES:")
    assert "broken" in str(info.value)


# -- booleans and the cluster switch ---------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "True", "yes", "on", " on "])
def test_true_values(raw):
    config = load_config({"CLUSTER_ENABLED": raw, "CLUSTER_NODES": "a:1,b:2"})
    assert config.cluster_enabled is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "off", ""])
def test_false_values(raw):
    assert load_config({"CLUSTER_ENABLED": raw}).cluster_enabled is False


@pytest.mark.parametrize("nodes", [None, "", " , "])
def test_cluster_enabled_without_nodes_is_rejected(nodes):
    env = {"CLUSTER_ENABLED": "true"}
    if nodes is not None:
        env["CLUSTER_NODES"] = nodes
    with pytest.raises(ConfigError) as info:
        load_config(env)
    assert str(info.value).startswith("CLUSTER_NODES:")


def test_cluster_enabled_with_nodes():
    config = load_config({"CLUSTER_ENABLED": "true", "CLUSTER_NODES": "a:8080,b:8080",
                          "NODE_ID": "count-cluster-1", "REPLICATION_FACTOR": "3"})
    assert config.cluster_enabled is True
    assert config.cluster_nodes == (HostPort("a", 8080), HostPort("b", 8080))
    assert config.node_id == "count-cluster-1"
    assert config.replication_factor == 3


def test_cluster_nodes_without_cluster_enabled_is_allowed():
    config = load_config({"CLUSTER_NODES": "a:1"})
    assert config.cluster_enabled is False
    assert config.cluster_nodes == (HostPort("a", 1),)


# -- log level and RUST_LOG ------------------------------------------------------------------


def test_log_level_value():
    assert load_config({"LOG_LEVEL": "count.storage=debug,info"}).log_level == (
        "count.storage=debug,info")


def test_rust_log_is_used_when_log_level_is_absent():
    assert load_config({"RUST_LOG": "debug"}).log_level == "debug"
    assert load_config({"RUST_LOG": "count::cluster=debug,warn"}).log_level == (
        "count::cluster=debug,warn")


def test_log_level_wins_over_rust_log():
    assert load_config({"RUST_LOG": "debug", "LOG_LEVEL": "warn"}).log_level == "warn"
    # LOG_LEVEL wins even when RUST_LOG would not parse
    assert load_config({"RUST_LOG": "nonsense", "LOG_LEVEL": "error"}).log_level == "error"


def test_bad_rust_log_is_rejected():
    with pytest.raises(ConfigError):
        load_config({"RUST_LOG": "verbose"})


def test_bad_rust_log_error_names_rust_log():
    with pytest.raises(ConfigError) as info:
        load_config({"RUST_LOG": "verbose"})
    assert str(info.value).startswith("RUST_LOG:")


def test_load_config_does_not_modify_its_input():
    env = {"RUST_LOG": "debug"}
    load_config(env)
    assert env == {"RUST_LOG": "debug"}


# -- settings table --------------------------------------------------------------------------


def test_settings_table_lists_every_setting():
    table = settings_table()
    lines = table.splitlines()
    assert lines[0].startswith("| Variable |")
    assert set(lines[1]) <= set("|-")
    rows = lines[2:]
    assert len(rows) == len(SETTINGS)
    for setting, row in zip(SETTINGS, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert cells[0] == f"`{setting.name}`"
        if setting.default:
            assert cells[1] == f"`{setting.default}`"
        else:
            assert cells[1] == "(empty)"
        if setting.low is not None:
            assert cells[2] == f"{setting.low}..{setting.high}"
        else:
            assert cells[2] == ""
        assert cells[3] == setting.doc


def test_the_readme_holds_the_generated_settings_table():
    """README.md's settings table is `python -m count.config`'s output, unchanged."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_table() in readme, "regenerate the README's table: python -m count.config"


def test_settings_table_shows_ranges_and_defaults():
    table = settings_table()
    assert "| `MEMORY_BUFFER_SIZE` | `10000` | 100..10000000 |" in table
    assert "| `CLUSTER_NODES` | (empty) |" in table
    assert "| `BIND_ADDRESS` | `127.0.0.1:8080` |" in table


def test_setting_names_are_unique():
    assert len(set(SETTING_NAMES)) == len(SETTING_NAMES)
    assert _setting("NODE_ID").default == "1"


def test_cluster_nodes_may_not_repeat_a_member():
    with pytest.raises(ConfigError, match="CLUSTER_NODES"):
        load_config({"CLUSTER_ENABLED": "true", "CLUSTER_NODES": "a:1,b:2,a:1"})


def test_inter_node_ports_must_fit():
    with pytest.raises(ConfigError, match="CLUSTER_PORT_OFFSET"):
        load_config({"BIND_ADDRESS": "0.0.0.0:64000", "CLUSTER_PORT_OFFSET": "1000"})


def test_members_and_peer_ports():
    single = load_config({"BIND_ADDRESS": "127.0.0.1:9000"})
    assert single.members() == ["127.0.0.1:9000"]
    cluster = load_config({"CLUSTER_ENABLED": "true", "CLUSTER_NODES": "a:8080, b:8080"})
    assert cluster.members() == ["a:8080", "b:8080"]
    assert cluster.peer_ports(8080) == (9080, 10080)

