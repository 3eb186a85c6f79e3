"""Configuration structs (unknown keys are errors, so a typo fails at startup) and loaders.

Files are TOML; ``STRATUS_*`` environment variables and command-line flags override them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import msgspec

from common.errors import ConfigError
from common.messages import Size
from common.resources import Resources, parse_capacity

PositiveS = Annotated[float, msgspec.Meta(gt=0)]

AZURE_SIZES: tuple[Size, ...] = (
    Size("ExtraSmall", 250, 768),
    Size("Small", 1000, 1792),
    Size("Medium", 2000, 3584),
    Size("Large", 4000, 7168),
    Size("ExtraLarge", 8000, 14336),
    Size("A6", 4000, 28672),
    Size("A7", 8000, 57344),
)
"""The original Azure catalogue (cores in millicores, memory in MiB)."""

DEFAULT_PRICES: dict[str, float] = {
    "ExtraSmall": 0.02,
    "Small": 0.06,
    "Medium": 0.12,
    "Large": 0.24,
    "ExtraLarge": 0.48,
    "A6": 0.50,
    "A7": 1.00,
}
"""Units per hour per size: the proportions of the original catalogue's price list."""

FENCE_MARGIN_S = 1.0
"""dead_after_s must exceed fence_after_s by at least this: the time an agent may need to notice
that its lease ran out and pause its VMs, plus message transit."""


class RebalanceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The rebalancer's knobs (``scheduler/placement/rebalance.py``): live migrations it plans
    to free lightly used hosts (binpack) or even hosts out (spread). The defaults are the
    ones ``stratus simulate`` and ``python -m bench.traces`` measure (docs/benchmarks.md)."""

    enabled: bool = True
    interval_s: PositiveS = 300.0
    """A planning round at most this often."""
    max_migrations_per_hour: Annotated[int, msgspec.Meta(ge=0)] = 600
    """Moves planned in any rolling hour, over the whole cluster."""
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0
    """A VM is not moved again until this long after its last migration started."""
    empty_below: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    """binpack: hosts filled less than this (the larger of CPU and memory) are emptied onto
    the other hosts in use, if every one of their VMs fits there."""
    spread_margin: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.1
    """spread: a VM moves from a fuller host only if that narrows their fill gap by this."""
    max_migrations_per_host: Annotated[int, msgspec.Meta(ge=1)] = 32
    """Migrations at once touching one host (as source or target); a host with more VMs is
    never emptied."""
    max_hosts_per_round: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Hosts a round tries to empty (binpack) or relieve (spread): bounds a round's work."""
    room_for: str = "8c/14g"
    """binpack: the VM size (cores/memory, like ``8c/14g``) hosts in use keep room for."""
    room_hosts: Annotated[int, msgspec.Meta(ge=0)] = 96
    """binpack: while fewer hosts in use have room for ``room_for``, a round makes room on
    the hosts closest to having it by moving a few small VMs onto tighter hosts (0: never)."""

    def __post_init__(self) -> None:
        try:  # a bad ``room_for`` is refused when the config is read
            self.room  # noqa: B018
        except ConfigError as exc:
            raise ValueError(f"room_for: {exc}") from None

    @property
    def room(self) -> Resources:
        """``room_for`` as resources."""
        return parse_capacity(self.room_for)


class StorageConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where VMs' disks live (docs/operations.md, Storage): host-local files, or replicated
    copies on hosts in distinct fault domains (common/replica_messages.py)."""

    default_kind: Literal["auto", "host_local", "replicated"] = "auto"
    """For VMs created without a storage kind. ``auto``: replicated once the cluster has up
    hosts in at least ``replicas`` distinct fault domains, else host-local."""
    replicas: Annotated[int, msgspec.Meta(ge=2, le=3)] = 2
    """Copies of every replicated disk, each in its own fault domain."""
    rebuild_mib_per_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    """A lost copy is made again on another host at most this fast (per copy)."""
    max_rebuilds_per_host: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Copies being filled at once from or onto one host."""


class SchedulerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str = ""
    """A NATS credentials file (JWT + nkey seed) to connect with; empty: none."""
    nats_nkey_seed: str = ""
    """A file holding an nkey seed (``stratus nats-config`` writes them); empty: none."""
    nats_tls_ca: str = ""
    """The CA file that signed the NATS server's certificate (with a ``tls://`` URL); empty:
    the system's CAs, or no TLS."""
    db_path: str = "stratus-scheduler.db"
    heartbeat_interval_s: PositiveS = 1.0
    fence_after_s: PositiveS = 4.0
    dead_after_s: PositiveS = 6.0
    placement_timeout_s: PositiveS = 300.0
    command_retry_s: PositiveS = 3.0
    """A command not yet reflected in the host's inventory is sent again after this long."""
    max_start_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3
    """Retryable start failures in a row (each on another host) before a VM fails; a VM that
    runs starts counting afresh, and the hosts it failed on are fit for it again."""
    recovery_per_host_per_tick: Annotated[int, msgspec.Meta(ge=1)] = 50
    """At most this many recovered (re-placed) VMs go to one host per placement pass."""
    tick_s: PositiveS = 0.2
    scorer: Literal["binpack", "spread"] = "binpack"
    cpu_overcommit: Annotated[float, msgspec.Meta(ge=1.0)] = 1.0
    sizes: list[Size] = []
    """Sizes added to the Azure catalogue."""
    builtin_images: dict[str, str] = {}
    """Image name -> file registered as a built-in gallery image at startup (its bytes go to the
    images object store), e.g. ``tiny`` -> the boot kit's ``tiny.qcow2``."""
    drain_parallelism: Annotated[int, msgspec.Meta(ge=1)] = 4
    """At most this many VMs of a draining host are on the move (stopped, not yet running
    elsewhere) at any time."""
    migration_prepare_timeout_s: PositiveS = 60.0
    """A live migration whose destination has not reported ready within this long is
    cancelled (the VM runs on where it was)."""
    migration_stall_timeout_s: PositiveS = 60.0
    """A live migration whose copy has made no progress for this long is cancelled."""
    migration_cancel_grace_s: PositiveS = 15.0
    """A cancelled migration whose source no longer reports the attempt at all (an agent
    restarted) is taken as ended after this long; one reported failed ends at once."""
    migration_max_per_host: Annotated[int, msgspec.Meta(ge=1)] = 2
    """At most this many live migrations touch one host (as source or destination) at once;
    more are refused (``busy``), and a drain waits for a slot."""
    migration_max_downtime_ms: Annotated[int, msgspec.Meta(ge=1)] = 100
    """The longest a migrating VM may be paused for the last round (``MigrateOut``)."""
    migration_max_bandwidth_mib_s: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Cap on a migration's copy rate; 0: no cap."""
    http_listen: str = ""
    """Address of the HTTP API and portal, like ``127.0.0.1:8080`` (port 0: any free port);
    empty means no HTTP server."""
    api_token: str = ""
    """Bearer token required by every mutating HTTP call; empty means no token is required."""
    api_token_for_reads: bool = False
    """Require the token for reads too."""
    http_allowed_hosts: list[str] = []
    """Host names the HTTP API answers to in ``Host`` and ``Origin`` besides the listen address,
    ``localhost``, ``127.0.0.1`` and ``::1`` (403 otherwise, against other sites' pages and DNS
    rebinding). ``"*"``: any (behind a proxy that checks them)."""
    http_max_streams_per_client: Annotated[int, msgspec.Meta(ge=1)] = 4
    """Concurrent ``/v1/events`` streams one client address may hold (429 beyond)."""
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Replicas of every JetStream stream, KV bucket and object store the scheduler creates
    (jobs, events, images, the leader lease, the state log): 3 on a 3-node NATS cluster. A
    start raises an existing stream's count to this, never lowers it."""
    lease_s: PositiveS = 3.0
    """The leader lease: a leader that has not renewed it for this long loses it, and a
    standby may take over. A takeover costs about this long (plus the catch-up); keep it below
    fence_after_s minus heartbeat_interval_s and agents' VMs never even pause during one."""
    snapshot_every: Annotated[int, msgspec.Meta(ge=1)] = 5000
    """The leader snapshots its store into the object store after this many state-log batches
    and purges the log before it (a brand-new standby starts from the snapshot)."""
    endpoint_port_min: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 20000
    endpoint_port_max: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 29999
    """Endpoints get their host ports from ``endpoint_port_min``..``endpoint_port_max``
    (each host's own pool) unless one is asked for."""
    prices: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: dict(DEFAULT_PRICES)
    )
    """Usage price per size in currency-neutral units per hour; a size missing here is priced
    as in DEFAULT_PRICES, or 0 if it has no default."""
    rebalance: RebalanceConfig = msgspec.field(default_factory=RebalanceConfig)
    """Live migrations that consolidate (binpack) or even out (spread) the hosts."""
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    """Disk storage kinds and the replicas of replicated disks."""

    def __post_init__(self) -> None:
        if self.dead_after_s < self.fence_after_s + FENCE_MARGIN_S:
            raise ValueError(
                f"dead_after_s ({self.dead_after_s}) must be >= fence_after_s "
                f"({self.fence_after_s}) + {FENCE_MARGIN_S}: a host must have fenced its VMs "
                "before the scheduler places them elsewhere"
            )
        if self.heartbeat_interval_s >= self.fence_after_s:
            raise ValueError("heartbeat_interval_s must be shorter than fence_after_s")
        if self.endpoint_port_min > self.endpoint_port_max:
            raise ValueError("endpoint_port_min must not be above endpoint_port_max")

    def price_table(self) -> dict[str, float]:
        """Price per hour of every size: the defaults, overridden by ``prices``."""
        table = {name: DEFAULT_PRICES.get(name, 0.0) for name in self.all_sizes()}
        table.update(self.prices)
        return table

    def all_sizes(self) -> dict[str, Size]:
        catalogue = {size.name: size for size in AZURE_SIZES}
        catalogue.update({size.name: size for size in self.sizes})
        return catalogue


class AgentConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    nats_creds: str = ""
    """A NATS credentials file (JWT + nkey seed) to connect with; empty: none."""
    nats_nkey_seed: str = ""
    """A file holding this host's nkey seed (``stratus nats-config``); empty: none."""
    nats_tls_ca: str = ""
    """The CA file that signed the NATS server's certificate (with a ``tls://`` URL); empty:
    the system's CAs, or no TLS."""
    host_id: str = ""
    """Empty means the machine's hostname."""
    region: str = "local"
    fault_domain: str = "fd-0"
    labels: dict[str, str] = {}
    capacity: str = ""
    """Declared capacity like ``64c/256g``; empty means measured with psutil."""
    reserved: str = "0c/0m"
    """Kept back for the host itself when capacity is measured."""
    cpu_overcommit: float | None = None
    driver: Literal["fake", "qemu"] = "fake"
    data_dir: str = "stratus-agent"
    heartbeat_interval_s: PositiveS = 1.0
    """Used until the scheduler's first ack tells the cluster's value."""
    fence_after_s: PositiveS = 4.0
    """Used until the scheduler's first ack tells the cluster's value."""
    fake_start_delay_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    fake_migration_setup_s: Annotated[float, msgspec.Meta(ge=0)] = 0.5
    """The fake driver's live migration: a fixed cost, plus memory and data disks at
    ``fake_migration_bandwidth_mib_s`` (hostagent/drivers/fake.py ``MigrationModel``)."""
    fake_migration_bandwidth_mib_s: Annotated[float, msgspec.Meta(gt=0)] = 1024.0
    fake_replica_fill_mib_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    """Fake driver: how fast a replica is copied (``fill_from``) or a joining copy brought in
    step, unless the command sets its own rate (hostagent/replicasim.py)."""
    underlay_ip: str = ""
    """The IPv4 address other hosts reach this one at (VXLAN between hosts, endpoints); empty:
    none, so this host's VMs reach no VM on another host and its endpoints have no address.
    ``stratus up`` gives its agents 127.0.0.1."""
    replica_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 10809
    """The NBD port of this host's replica server (on ``underlay_ip``) serving the disk
    replicas it holds; 0: any free port (tests)."""
    disk_capacity: str = ""
    """Space for disks and replicas like ``500g``; empty: the size of the data directory's
    file system, measured at start."""
    # --- the qemu driver
    boot_dir: str = ""
    """The boot kit (``deploy/images/build-tiny.sh OUT_DIR``): ``vmlinux``, ``initramfs.gz`` and
    built-in images such as ``tiny.qcow2``."""
    qemu_binary: str = "qemu-system-x86_64"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    """``auto``: a time-boxed KVM self-test boot at agent start (cached per host boot) decides,
    falling back to TCG."""
    kvm_selftest_timeout_s: PositiveS = 8.0
    max_concurrent_boots: Annotated[int, msgspec.Meta(ge=1)] = 2
    """Boots cost ~2.7 CPU-seconds each under TCG: more VMs than this wait their turn."""
    boot_timeout_s: PositiveS = 60.0
    """A guest that has not printed its readiness marker by then has failed."""
    stop_timeout_s: PositiveS = 10.0
    """How long a graceful ACPI power-off may take before QMP ``quit`` and then SIGKILL."""

    def __post_init__(self) -> None:
        if self.underlay_ip:
            try:
                ipaddress.IPv4Address(self.underlay_ip)
            except ValueError as exc:
                raise ValueError(
                    f"underlay_ip {self.underlay_ip!r} is not an IPv4 address"
                ) from exc


C = TypeVar("C", SchedulerConfig, AgentConfig)


NATS_ENVIRONMENT = {
    "nats_url": "STRATUS_NATS",
    "nats_creds": "STRATUS_NATS_CREDS",
    "nats_nkey_seed": "STRATUS_NATS_NKEY_SEED",
    "nats_tls_ca": "STRATUS_NATS_TLS_CA",
}
"""The environment variables the CLI reads, and the config keys the daemons read them into."""


def nats_environment(environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """Config overrides from ``STRATUS_NATS`` and friends: the daemons honour the CLI's
    environment (flags > environment > config file > defaults)."""
    return {key: environ[name] for key, name in NATS_ENVIRONMENT.items() if environ.get(name)}


def load_config(kind: type[C], path: str | None, overrides: dict[str, object]) -> C:
    """Read ``path`` (TOML, optional), apply non-None ``overrides`` and validate."""
    raw: dict[str, object] = {}
    if path:
        try:
            raw = msgspec.toml.decode(Path(path).read_bytes())
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return msgspec.convert(raw, kind)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
