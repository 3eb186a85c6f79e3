"""The replica server: one ``qemu-storage-daemon`` per host serving the replicas it holds over NBD.

Under ``<data_dir>/<host_id>/replicas/``: ``<disk_id>.qcow2`` per made replica (a data disk's
empty qcow2, an OS disk's qcow2 over its cached image, or a full copy of another host's replica
made by ``qemu-img convert`` from its NBD export into ``.<disk_id>.partial``, renamed when
complete), and the daemon's ``daemon.pid``, ``qmp.sock`` (the agent's monitor), ``server.json``
(the address and port it listens on) and ``daemon.err``. Each made replica is a block node
exported writable under its disk id (node and export id: ``replicaplan.node_name``).

The daemon is started with ``--daemonize``: it is no child of the agent and outlives it. A new
agent adopts it (pid file, monitor) with its exports, so the VMs reading and writing them never
notice the restart. If the daemon dies, :meth:`run` starts it again and exports what is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from common.errors import DriverError
from common.replica_messages import ConfigureReplicas, ReplicaSpec, ReplicaStatus, UpdateReplicas
from common.replicaset import ReplicaSet
from common.waiting import poll
from hostagent.disks import run_qemu_img
from hostagent.drivers.qmp import JsonObject, QmpClient, QmpError
from hostagent.hostcmd import HostCommands
from hostagent.images import ImageCache
from hostagent.replicaplan import (
    Held,
    check_disk_ids,
    node_name,
    plan_replicas,
    replica_statuses,
)
from hostagent.replicas import ReplicaBackend, ReplicaError, merged

log = logging.getLogger(__name__)

DAEMON = "qemu-storage-daemon"
START_TIMEOUT_S = 10.0
EXPORT_GONE_S = 5.0
RESTART_WAIT_S = 0.5
PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class ServerMeta(msgspec.Struct, kw_only=True):
    address: str
    port: int


@dataclass
class Making:
    """A replica being made in the background (created, or copied from ``fill_from``)."""

    task: asyncio.Task[None]
    progress: float = 0.0


@dataclass
class ReplicaServer:
    root: Path
    address: str
    """Where the NBD server listens (the host's underlay address, or loopback)."""
    wanted_port: int
    """0: any free port (tests)."""
    images: ImageCache | None = None
    commands: HostCommands = field(default_factory=HostCommands)
    name: str = DAEMON
    _port: int = 0
    _digest: str = ""
    _set: ReplicaSet = field(default_factory=ReplicaSet)
    """The set last applied (an update is merged into it)."""
    _desired: list[ReplicaSpec] = field(default_factory=list)
    _existing: set[str] = field(default_factory=set)
    """Named replicas made before (as the scheduler says, or made here since): if their files
    are gone, they are lost, never made anew (an empty copy would lack acknowledged writes)."""
    _exported: set[str] = field(default_factory=set)
    _making: dict[str, Making] = field(default_factory=dict)
    _failed: dict[str, tuple[str, bool]] = field(default_factory=dict)
    _qmp: QmpClient | None = None
    _started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return self._port

    @property
    def applied_digest(self) -> str:
        return self._digest

    def path(self, disk_id: str) -> Path:
        return self.root / f"{disk_id}.qcow2"

    def made_file(self, disk_id: str) -> Path | None:
        """The file of this host's made copy of ``disk_id``, if it holds one."""
        path = self.path(disk_id)
        return path if path.exists() else None

    def _partial(self, disk_id: str) -> Path:
        return self.root / f".{disk_id}.partial"

    # ------------------------------------------------------------------ the daemon

    async def open(self) -> None:
        """Adopt the daemon a previous agent left running; else choose the port a daemon will
        listen on, started once the host is asked to hold a replica (a host that holds none
        runs none)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for partial in self.root.glob(".*.partial"):
            partial.unlink()  # a copy cut short by the last agent's end: made again if named
        meta = self._read_meta()
        pid = self._read_pid()
        if meta is not None and pid is not None and _alive(pid, self.root):
            if meta.address == self.address and self.wanted_port in (0, meta.port):
                with contextlib.suppress(QmpError):
                    await self._connect(meta.port)
                    self._started.set()
                    log.info("replica server adopted pid=%d port=%d", pid, meta.port)
                    return
            _kill(pid)
        kept = meta.port if meta is not None and meta.address == self.address else 0
        self._port = self.wanted_port or kept or _free_port(self.address)

    async def _ensure(self) -> None:
        """The daemon runs (started now if it does not)."""
        if self._qmp is None or self._qmp.closed.is_set():
            await self._start()

    async def _start(self) -> None:
        port = self._port or self.wanted_port or _free_port(self.address)
        for stale in ("qmp.sock", "daemon.pid"):
            with contextlib.suppress(FileNotFoundError):
                (self.root / stale).unlink()
        argv = self.commands.argv(
            DAEMON,
            "--daemonize",
            "--pidfile",
            str(self.root / "daemon.pid"),
            "--chardev",
            f"socket,id=monitor,path={self.root / 'qmp.sock'},server=on,wait=off",
            "--monitor",
            "chardev=monitor",
            "--nbd-server",
            f"addr.type=inet,addr.host={self.address},addr.port={port}",
        )
        with (self.root / "daemon.err").open("wb") as stderr:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=stderr, stderr=stderr
                )
            except FileNotFoundError as exc:
                raise ReplicaError(f"{DAEMON} not found: apt-get install qemu-system-x86") from exc
            async with asyncio.timeout(START_TIMEOUT_S):
                code = await proc.wait()
        if code != 0:
            detail = (self.root / "daemon.err").read_text(errors="replace").strip()
            raise ReplicaError(f"{DAEMON} failed to start: {detail}")
        (self.root / "server.json").write_bytes(
            msgspec.json.encode(ServerMeta(address=self.address, port=port))
        )
        try:
            await self._connect(port)
        except QmpError as exc:
            raise ReplicaError(f"{DAEMON} started but its monitor does not answer: {exc}") from exc
        self._started.set()
        log.info("replica server started pid=%s address=%s port=%d", self._read_pid(), *self._at())

    def _at(self) -> tuple[str, int]:
        return self.address, self._port

    async def _connect(self, port: int) -> None:
        self._qmp = await QmpClient.connect(self.root / "qmp.sock")
        self._port = port
        ids = {str(export.get("id")) for export in await _exports(self._qmp)}
        made = [path.stem for path in self.root.glob("*.qcow2")]
        self._exported = {disk_id for disk_id in made if node_name(disk_id) in ids}

    def _read_meta(self) -> ServerMeta | None:
        try:
            return msgspec.json.decode((self.root / "server.json").read_bytes(), type=ServerMeta)
        except (OSError, msgspec.DecodeError):
            return None

    def _read_pid(self) -> int | None:
        try:
            return int((self.root / "daemon.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    async def run(self) -> None:
        """Start the daemon again whenever it dies, and export what is made (a failed restart
        is tried again by the next apply)."""
        while True:
            await self._started.wait()
            assert self._qmp is not None
            await self._qmp.closed.wait()
            self._started.clear()
            log.error("replica server gone, starting it again port=%d", self._port)
            await asyncio.sleep(RESTART_WAIT_S)
            try:
                await self._start()
                plan = plan_replicas(self._desired, self._held(), self._existing)
                for disk_id in plan.export:
                    await self._export(disk_id)
            except (ReplicaError, QmpError, OSError, TimeoutError) as exc:
                log.error("replica server restart failed error=%s", exc)

    async def close(self) -> None:
        """Stop making replicas and disconnect; the daemon and its exports stay."""
        for making in self._making.values():
            making.task.cancel()
        await asyncio.gather(*(m.task for m in self._making.values()), return_exceptions=True)
        self._making.clear()
        if self._qmp is not None:
            await self._qmp.close()

    async def shutdown(self) -> None:
        """Close, then end the daemon (its exports with it). For tests and rigs."""
        await self.close()
        pid = self._read_pid()
        if pid is not None and _alive(pid, self.root):
            _kill(pid)

    # ------------------------------------------------------------------ applying

    async def apply(self, config: ConfigureReplicas) -> None:
        await self._apply(config, ReplicaSet.of(config))

    async def update(self, update: UpdateReplicas) -> None:
        """The update merged into the last set applied, and that set applied as a whole."""
        following = merged(self._set, update)
        await self._apply(following.whole(update.digest), following)

    async def _apply(self, config: ConfigureReplicas, replica_set: ReplicaSet) -> None:
        if why := check_disk_ids(config.replicas):
            raise ReplicaError(why)
        self._desired = list(config.replicas)
        named = {spec.disk_id for spec in config.replicas}
        self._existing = set(config.existing) | (self._existing & named)
        plan = plan_replicas(config.replicas, self._held(), self._existing)
        try:
            if not plan.empty or config.replicas:
                await self._ensure()
            for disk_id in plan.delete:
                await self._delete(disk_id)
            for disk_id in plan.export:
                await self._export(disk_id)
        except (QmpError, OSError, TimeoutError) as exc:
            raise ReplicaError(f"replica server: {exc}") from exc
        for spec in plan.make:
            self._failed.pop(spec.disk_id, None)
            task = asyncio.create_task(self._make(spec), name=f"replica-{spec.disk_id}")
            self._making[spec.disk_id] = Making(task)
        self._digest = config.digest
        self._set = replica_set
        log.info(
            "replicas applied digest=%s replicas=%d made=%d deleted=%d",
            config.digest,
            len(config.replicas),
            len(plan.make),
            len(plan.delete),
        )

    def statuses(self) -> list[ReplicaStatus]:
        return replica_statuses(self._desired, self._held(), self._existing)

    def _held(self) -> dict[str, Held]:
        held: dict[str, Held] = {}
        for path in self.root.glob("*.qcow2"):
            held[path.stem] = Held(made=True, exported=path.stem in self._exported)
        for disk_id, (reason, retryable) in self._failed.items():
            held.setdefault(disk_id, Held(failed=reason, retryable=retryable))
        for disk_id, making in self._making.items():
            held[disk_id] = Held(filling=making.progress)
        return held

    async def _make(self, spec: ReplicaSpec) -> None:
        disk_id, partial = spec.disk_id, self._partial(spec.disk_id)
        try:
            if spec.fill_from is not None:
                await self._fill(spec, partial)
            elif spec.kind == "os":
                base = await self._image(spec)
                await run_qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                                   str(partial))  # fmt: skip
            else:
                await run_qemu_img("create", "-q", "-f", "qcow2", str(partial), f"{spec.size_mib}M")
            partial.rename(self.path(disk_id))
            self._existing.add(disk_id)
            await self._export(disk_id)
            log.info("replica made disk_id=%s vm=%s filled=%s", disk_id, spec.vm, spec.fill_from)
        except (DriverError, ReplicaError, QmpError, OSError) as exc:
            retryable = exc.retryable if isinstance(exc, DriverError) else True
            self._failed[disk_id] = (str(exc), retryable)
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            log.error("replica not made disk_id=%s error=%s", disk_id, exc)
        finally:
            making = self._making.get(disk_id)
            if making is not None and making.task is asyncio.current_task():
                del self._making[disk_id]

    async def _image(self, spec: ReplicaSpec) -> Path:
        if self.images is None:
            raise ReplicaError(f"no image cache on this host for replica {spec.disk_id}")
        return await self.images.resolve(spec.image, spec.image_sha256)

    async def _fill(self, spec: ReplicaSpec, partial: Path) -> None:
        """A full copy of ``spec.fill_from``'s export, its progress followed."""
        source = spec.fill_from
        assert source is not None
        args = ["convert", "-p", "-f", "raw", "-O", "qcow2"]
        if spec.fill_mib_s > 0:
            args += ["-r", f"{max(1, int(spec.fill_mib_s))}M"]
        url = f"nbd://{source.address}:{source.port}/{spec.disk_id}"
        proc = await asyncio.create_subprocess_exec(
            *self.commands.argv("qemu-img", *args, url, str(partial)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            errors = asyncio.create_task(proc.stderr.read())
            while chunk := await proc.stdout.read(256):
                if found := PROGRESS.findall(chunk):
                    self._making[spec.disk_id].progress = float(found[-1]) / 100
            code, detail = await proc.wait(), (await errors).decode(errors="replace").strip()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if code != 0:
            raise ReplicaError(f"copy from {source.host} failed: {detail}")

    async def _export(self, disk_id: str) -> None:
        qmp = self._monitor()
        node = node_name(disk_id)
        nodes = await qmp.execute("query-named-block-nodes", {"flat": True})
        names = (
            {n.get("node-name") for n in nodes if isinstance(n, dict)}
            if isinstance(nodes, list)
            else set()
        )
        if node not in names:
            file: JsonObject = {"driver": "file", "filename": str(self.path(disk_id))}
            await qmp.execute("blockdev-add", {"driver": "qcow2", "node-name": node, "file": file})
        export = {"type": "nbd", "id": node, "node-name": node, "name": disk_id, "writable": True}
        await qmp.execute("block-export-add", export)
        self._exported.add(disk_id)

    async def _delete(self, disk_id: str) -> None:
        making = self._making.pop(disk_id, None)
        if making is not None:
            making.task.cancel()
            await asyncio.gather(making.task, return_exceptions=True)
        self._failed.pop(disk_id, None)
        if disk_id in self._exported:
            await self._unexport(disk_id)
        for path in (self.path(disk_id), self._partial(disk_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.info("replica deleted disk_id=%s", disk_id)

    async def _unexport(self, disk_id: str) -> None:
        qmp, node = self._monitor(), node_name(disk_id)
        with contextlib.suppress(QmpError):  # already gone
            await qmp.execute("block-export-del", {"id": node, "mode": "hard"})

        async def gone() -> bool | None:
            return None if any(e.get("id") == node for e in await _exports(qmp)) else True

        if await poll(gone, timeout_s=EXPORT_GONE_S, interval_s=0.02) is None:
            raise ReplicaError(f"the export of {disk_id} is still in use")
        with contextlib.suppress(QmpError):
            await qmp.execute("blockdev-del", {"node-name": node})
        self._exported.discard(disk_id)

    def _monitor(self) -> QmpClient:
        if self._qmp is None or self._qmp.closed.is_set():
            raise ReplicaError("the replica server is not running")
        return self._qmp


def stop_replica_servers(data_dir: Path, host_id: str = "*") -> int:
    """Kill the replica servers the agents under ``data_dir`` left running (they outlive their
    agents), or only ``host_id``'s; how many ran. For rigs and tests that take a cluster or a
    host down."""
    killed = 0
    for pid_file in data_dir.glob(f"{host_id}/replicas/daemon.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if _alive(pid, pid_file.parent):
                _kill(pid)
                killed += 1
    return killed


async def _exports(qmp: QmpClient) -> list[JsonObject]:
    exports = await qmp.execute("query-block-exports")
    return [e for e in exports if isinstance(e, dict)] if isinstance(exports, list) else []


def _free_port(address: str) -> int:
    """A port free on ``address`` now (on any address when the daemon listens in another
    network namespace, where ``address`` is not this process's)."""
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _alive(pid: int, root: Path) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X") and os.fsencode(root) in cmdline


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


_: type[ReplicaBackend] = ReplicaServer
