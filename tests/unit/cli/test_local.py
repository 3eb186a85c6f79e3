"""The local cluster's pure parts: daemon command lines, the demo's VM mix, victim choice."""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli import demo, local
from cli.args import AUTO_HTTP
from cli.up import http_listen_for
from common import messages as m
from common.config import AZURE_SIZES
from common.errors import StratusError
from common.resources import parse_capacity

SIZES = {size.name: size for size in AZURE_SIZES}
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_demo_has_twelve_uniquely_named_vms_of_known_sizes() -> None:
    requests = demo.demo_requests()
    assert len(requests) == 12
    assert len({request.name for request in requests}) == 12
    assert {request.size for request in requests} <= set(SIZES)
    assert len({request.size for request in requests}) >= 5


def test_demo_vms_fit_on_the_two_surviving_hosts_in_any_order() -> None:
    """Any greedy placement succeeds when the spare capacity left with every VM placed on two
    hosts is at least the largest VM (per resource): some host always has room for it."""
    host = parse_capacity(demo.DEMO_CAPACITY)
    sizes = [SIZES[request.size] for request in demo.demo_requests()]
    spare_milli = 2 * host.cpu_milli - sum(size.cpu_milli for size in sizes)
    spare_mib = 2 * host.mem_mib - sum(size.mem_mib for size in sizes)
    assert spare_milli >= max(size.cpu_milli for size in sizes)
    assert spare_mib >= max(size.mem_mib for size in sizes)


def test_agent_command_line() -> None:
    spec = local.ClusterSpec(data_dir=Path("/d"), capacity="8c/32g")
    args = local.agent_args("nats://127.0.0.1:5", spec, 2)
    assert args[:3] == [sys.executable, "-m", "hostagent"]
    pairs = dict(zip(args[3::2], args[4::2], strict=True))
    assert pairs == {
        "--nats": "nats://127.0.0.1:5",
        "--host-id": "host-2",
        "--capacity": "8c/32g",
        "--region": "local",
        "--fault-domain": "fd-2",
        "--data-dir": "/d/agents",
        "--driver": "fake",
        "--log-level": "INFO",
        "--underlay-ip": "127.0.0.1",  # all on this machine: endpoints answer on its loopback
        "--replica-port": "0",  # all on one address: each replica server takes a free port
    }


def test_scheduler_command_line() -> None:
    args = local.scheduler_args("nats://127.0.0.1:5", local.ClusterSpec(data_dir=Path("/d")))
    assert args[:3] == [sys.executable, "-m", "scheduler"]
    pairs = dict(zip(args[3::2], args[4::2], strict=True))
    assert pairs == {
        "--nats": "nats://127.0.0.1:5",
        "--db": "/d/scheduler.db",
        "--log-level": "INFO",
    }


def test_host_ids() -> None:
    assert local.ClusterSpec(data_dir=Path("/d"), hosts=3).host_ids == [
        "host-1",
        "host-2",
        "host-3",
    ]


def vm(name: str, host: str | None, state: m.VmState = m.VmState.RUNNING) -> m.VmInfo:
    return m.VmInfo(
        name=name, size="Small", cpu_milli=1000, mem_mib=1792, image="tiny", region=None,
        availability_set=None, state=state, host=host, generation=1, reason="",
        created_at=T0, updated_at=T0,
    )  # fmt: skip


def test_busiest_host_counts_running_vms_and_breaks_ties_by_id() -> None:
    vms = [vm("a", "host-3"), vm("b", "host-2"), vm("c", "host-3"), vm("d", "host-2")]
    assert demo.busiest_host(vms) == "host-2"
    vms.append(vm("e", "host-3"))
    assert demo.busiest_host(vms) == "host-3"
    assert demo.busiest_host([*vms, vm("f", "host-1", m.VmState.STOPPING)]) == "host-3"


def test_busiest_host_needs_a_running_vm() -> None:
    with pytest.raises(StratusError):
        demo.busiest_host([vm("a", None, m.VmState.PENDING)])


def test_port_is_free() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not local.port_is_free(sock.getsockname()[1])


def test_two_schedulers_have_their_own_stores_and_http_ports() -> None:
    spec = local.ClusterSpec(data_dir=Path("/d"), schedulers=2, http_listen="127.0.0.1:8080")
    assert spec.scheduler_names == ["scheduler", "scheduler-2"]
    second = local.scheduler_args("nats://127.0.0.1:5", spec, "scheduler-2")
    pairs = dict(zip(second[3::2], second[4::2], strict=True))
    assert pairs["--db"] == "/d/scheduler-2.db"
    assert pairs["--http"] == "127.0.0.1:8081"
    first = local.scheduler_args("nats://127.0.0.1:5", spec, "scheduler")
    assert dict(zip(first[3::2], first[4::2], strict=True))["--http"] == "127.0.0.1:8080"
    assert local.ClusterSpec(data_dir=Path("/d")).scheduler_names == ["scheduler"]


def test_more_schedulers_than_two_are_refused(tmp_path: Path) -> None:
    with pytest.raises(StratusError, match="--schedulers"):
        local.start_cluster(local.ClusterSpec(data_dir=tmp_path, schedulers=3))


def test_http_alone_takes_the_first_run_of_free_ports_past_a_taken_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        chosen = http_listen_for(AUTO_HTTP, schedulers=2, first_port=busy)
        assert chosen is not None
        host, _, port = chosen.rpartition(":")
        assert host == "127.0.0.1" and int(port) > busy
        assert local.port_is_free(int(port)) and local.port_is_free(int(port) + 1)
        # An address given by the operator is theirs: taken or not, it is kept.
        assert http_listen_for(f"127.0.0.1:{busy}", schedulers=1) == f"127.0.0.1:{busy}"
        assert http_listen_for(None, schedulers=1) is None
