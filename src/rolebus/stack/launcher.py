"""The local stack: Kafka node(s) and PostgreSQL under one data folder.

``up`` is idempotent (running, ready servers are left alone), ``down`` stops
what the pid files name, stale pid files are detected and removed, and data
survives ``down``/``up``. Services configured as external are never started.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rolebus import endpoints
from rolebus.config import Settings
from rolebus.endpoints import Layout
from rolebus.errors import RolebusError, StackError
from rolebus.stack import kafka, ports, postgres, probe, procs

Progress = Callable[[str], None]
Readiness = tuple[bool, str]  # a service's ``ready`` and ``detail``


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None
    running: bool
    external: bool = False
    stale_pid_file: bool = False
    ready: bool | None = None
    detail: str = ""


def _quiet(_: str) -> None:
    pass


class LocalStack:
    def __init__(self, settings: Settings, progress: Progress = _quiet) -> None:
        self.settings = settings
        self.progress = progress
        self.data_dir = settings.data_dir.resolve()

    # --- layout ---------------------------------------------------------------
    # Each operation reads stack.json once and passes the layout down; without
    # one, nodes() and pg() read it themselves.

    def _layout(self) -> Layout:
        return endpoints.layout(self.settings, endpoints.read_stack_file(self.data_dir))

    def nodes(self, lay: Layout | None = None) -> list[kafka.KafkaNode]:
        lay = lay or self._layout()
        port, ctl = lay.kafka_port, lay.kafka_controller_port
        return [
            kafka.KafkaNode(i + 1, port + i, ctl + i, self.data_dir / f"kafka-{i + 1}")
            for i in range(lay.brokers)
        ]

    def pg(self, lay: Layout | None = None) -> postgres.PgNode:
        return postgres.PgNode((lay or self._layout()).pg_port, self.data_dir / "postgres")

    def _check_moves(self, lay: Layout) -> None:
        """Refuse to re-port a running stack: its clients would lose it."""
        s = self.settings
        nodes = self.nodes(lay)
        kafka_up = any(procs.inspect(n.pid_file, str(n.config_file)).alive for n in nodes)
        pg = self.pg(lay)
        moves = [
            ("ROLEBUS_KAFKA_PORT", "kafka_port", kafka_up),
            ("ROLEBUS_KAFKA_CONTROLLER_PORT", "kafka_controller_port", kafka_up),
            ("ROLEBUS_PG_PORT", "pg_port", procs.inspect(pg.pid_file, str(pg.pgdata)).alive),
        ]
        for setting, key, running in moves:
            if running and getattr(lay, key) != getattr(s, key):
                raise StackError(
                    f"{setting}: the stack in {self.data_dir} is running on port "
                    f"{getattr(lay, key)}, not {getattr(s, key)}; run `rolebus stack down` "
                    "before moving it, or drop the setting"
                )

    def _record(self, lay: Layout, recorded: dict[str, Any]) -> tuple[str, Layout]:
        """Check, then create or update stack.json (``recorded`` is its content);
        return the cluster id and the layout now recorded."""
        self._check_moves(lay)
        if recorded and recorded.get("brokers") != self.settings.brokers:
            raise StackError(
                f"data folder {self.data_dir} holds a {recorded.get('brokers')}-broker cluster; "
                f"use --brokers {recorded.get('brokers')} or another --data-dir"
            )
        cluster_id = str(recorded.get("cluster_id") or kafka.new_cluster_id())
        s = self.settings
        record = {
            "cluster_id": cluster_id, "brokers": s.brokers, "kafka_port": s.kafka_port,
            "kafka_controller_port": s.kafka_controller_port, "pg_port": s.pg_port,
            "kafka_version": kafka.kafka_version(),
        }  # fmt: skip
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StackError(f"ROLEBUS_DATA_DIR: cannot create {self.data_dir}: {exc}") from exc
        (self.data_dir / endpoints.STACK_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return cluster_id, endpoints.layout(self.settings, record)

    # --- up -------------------------------------------------------------------

    def up(self) -> list[ServiceStatus]:
        started = time.monotonic()
        recorded = endpoints.read_stack_file(self.data_dir)
        lay = endpoints.layout(self.settings, recorded)
        ends = endpoints.resolve(self.settings, lay)
        kafka_ok: Readiness | None = None
        pg_ok: Readiness | None = None
        # External services first: fail fast before starting anything local.
        if ends.kafka_external:
            kafka_ok = self._ready_kafka(ends, lay)
        if ends.pg_external:
            pg_ok = self._ready_pg(ends)
        if not (ends.kafka_external and ends.pg_external):
            cluster_id, lay = self._record(lay, recorded)
            if not ends.kafka_external:
                self._start_kafka(cluster_id, lay)
            if not ends.pg_external:
                self._start_pg(lay)
        ends = endpoints.resolve(self.settings, lay)
        if not ends.kafka_external:
            kafka_ok = self._ready_kafka(ends, lay)
        if not ends.pg_external:
            pg_ok = self._ready_pg(ends)
        self.progress(f"stack ready in {time.monotonic() - started:.1f}s")
        return self._statuses(lay, ends, self.settings.connect_timeout_s, kafka_ok, pg_ok)

    def _start_kafka(self, cluster_id: str, lay: Layout) -> None:
        nodes = self.nodes(lay)
        todo = [n for n in nodes if not self._running(n.pid_file, str(n.config_file), n.node_id)]
        if not todo:
            self.progress("kafka: already running")
            return
        for node in todo:
            _check_port_free(node.port, "ROLEBUS_KAFKA_PORT")
            _check_port_free(node.controller_port, "ROLEBUS_KAFKA_CONTROLLER_PORT")
        libs = self.settings.kafka_libs_dir or kafka.default_libs_dir()
        if not (libs / ".complete").exists():
            self.progress(f"kafka: resolving Kafka {kafka.kafka_version()} jars with Maven")
        kafka.ensure_jars(libs)
        for node in todo:
            node.home.mkdir(parents=True, exist_ok=True)
            kafka.write_config(node, nodes)
            kafka.format_storage(libs, node, cluster_id)
            pid = kafka.start(libs, node, self.settings.kafka_heap)
            procs.write_pid(node.pid_file, pid)
            self.progress(f"kafka-{node.node_id}: started (pid {pid}, 127.0.0.1:{node.port})")

    def _start_pg(self, lay: Layout) -> None:
        node = self.pg(lay)
        if self._running(node.pid_file, str(node.pgdata), "postgres"):
            self.progress("postgres: already running")
            return
        _check_port_free(node.port, "ROLEBUS_PG_PORT")
        if not (node.pgdata / "PG_VERSION").exists():
            self.progress("postgres: initdb")
        user = postgres.prepare(node)
        postgres.init(node, user)
        postgres.start(node, self.settings.connect_timeout_s * 3, user)
        self.progress(f"postgres: started (127.0.0.1:{node.port})")

    def _running(self, pid_file: Path, marker: str, name: object) -> bool:
        state = procs.inspect(pid_file, marker)
        if state.stale:
            self.progress(f"{name}: removing stale pid file {pid_file} (pid {state.pid})")
            pid_file.unlink(missing_ok=True)
        return state.alive

    def _ready_kafka(self, ends: endpoints.Endpoints, lay: Layout) -> Readiness:
        """Local brokers get time to boot and a write round trip; an external
        cluster must answer within connect_timeout_s and is never written to here."""
        local, timeout = not ends.kafka_external, self.settings.connect_timeout_s
        try:
            health = asyncio.run(probe.kafka_ready(
                ends.kafka_bootstrap, lay.brokers if local else 1,
                max(90.0, timeout) if local else timeout, round_trip=local,
            ))  # fmt: skip
        except RolebusError as exc:
            if local:
                raise StackError(f"local kafka: {exc}\n{self._kafka_logs(lay)}") from exc
            raise StackError(f"{endpoints.bootstrap_origin(ends)}: {exc}") from exc
        what = "local" if local else "external (nothing local started)"
        self.progress(f"kafka: {what}, {health.brokers} broker(s) ready")
        return True, _kafka_detail(health, round_trip=local)

    def _ready_pg(self, ends: endpoints.Endpoints) -> Readiness:
        local, timeout = not ends.pg_external, self.settings.connect_timeout_s
        origin = "local postgres" if local else "ROLEBUS_PG_DSN"
        pg = probe.pg_ready(
            ends.pg_dsn, timeout * 3 if local else timeout, create=local, origin=origin
        )
        what = "local" if local else "external (nothing local started)"
        self.progress(f"postgres: {what}, {pg.server_version} ready, pgvector {pg.vector_version}")
        return True, _pg_detail(pg)

    def _kafka_logs(self, lay: Layout) -> str:
        parts = []
        for node in self.nodes(lay):
            alive = procs.inspect(node.pid_file, str(node.config_file)).alive
            if not alive:
                parts.append(
                    f"kafka-{node.node_id} exited; last log lines:\n{kafka.log_tail(node)}"
                )
        return "\n".join(parts)

    # --- down / status -----------------------------------------------------------

    def down(self) -> list[str]:
        lay = self._layout()
        stopped = []
        running = []
        for node in self.nodes(lay):
            state = procs.inspect(node.pid_file, str(node.config_file))
            if state.alive and state.pid is not None:
                running.append((f"kafka-{node.node_id}", state.pid))
        graceful = procs.terminate_all([pid for _, pid in running], 60)
        for (name, _), ok in zip(running, graceful, strict=True):
            stopped.append(name if ok else f"{name} (killed)")
        for node in self.nodes(lay):
            node.pid_file.unlink(missing_ok=True)
        pg = self.pg(lay)
        if procs.inspect(pg.pid_file, str(pg.pgdata)).alive:
            ok = postgres.stop(pg)
            stopped.append("postgres" if ok else "postgres (killed)")
        return stopped

    def status(self, probe_timeout_s: float = 5.0) -> list[ServiceStatus]:
        lay = self._layout()
        return self._statuses(lay, endpoints.resolve(self.settings, lay), probe_timeout_s)

    def _statuses(
        self,
        lay: Layout,
        ends: endpoints.Endpoints,
        probe_timeout_s: float,
        kafka_ok: Readiness | None = None,
        pg_ok: Readiness | None = None,
    ) -> list[ServiceStatus]:
        """Each service's state; readiness as given (up() just checked it), else probed."""
        out = [] if ends.kafka_external else [self._kafka_status(n) for n in self.nodes(lay)]
        if ends.kafka_external:
            out.append(ServiceStatus("kafka", ends.kafka_bootstrap, None, False, external=True))
        pg = self.pg(lay)
        if ends.pg_external:
            out.append(ServiceStatus("postgres", "external", None, False, external=True))
        else:
            st = procs.inspect(pg.pid_file, str(pg.pgdata))
            out.append(ServiceStatus("postgres", f"127.0.0.1:{pg.port}", st.pid, st.alive))
        if kafka_ok is None:
            kafka_ok = _probe_kafka(ends, out, probe_timeout_s)
        if pg_ok is None:
            pg_ok = _probe_pg(ends, out, probe_timeout_s)
        return _with_readiness(out, kafka_ok, pg_ok)

    def _kafka_status(self, node: kafka.KafkaNode) -> ServiceStatus:
        st = procs.inspect(node.pid_file, str(node.config_file))
        return ServiceStatus(
            f"kafka-{node.node_id}", node.bootstrap, st.pid, st.alive, stale_pid_file=st.stale
        )


def _with_readiness(
    services: list[ServiceStatus], kafka_ok: Readiness, pg_ok: Readiness
) -> list[ServiceStatus]:
    """Fill ``ready`` and ``detail`` of every service that should answer."""
    (kafka_ready, kafka_detail), (pg_ready, pg_detail) = kafka_ok, pg_ok
    result = []
    for svc in services:
        if svc.name.startswith("kafka") and (svc.running or svc.external):
            svc = ServiceStatus(**{**asdict(svc), "ready": kafka_ready, "detail": kafka_detail})
        elif svc.name == "postgres" and (svc.running or svc.external):
            svc = ServiceStatus(**{**asdict(svc), "ready": pg_ready, "detail": pg_detail})
        result.append(svc)
    return result


def _probe_kafka(
    ends: endpoints.Endpoints, services: list[ServiceStatus], timeout_s: float
) -> Readiness:
    if not any(s.name.startswith("kafka") and (s.running or s.external) for s in services):
        return False, ""
    local = not ends.kafka_external
    expected = sum(s.name.startswith("kafka") for s in services) if local else 1
    try:
        # Never write to an external cluster, not even the readiness topic.
        h = asyncio.run(
            probe.kafka_ready(ends.kafka_bootstrap, expected, timeout_s, round_trip=local)
        )
    except RolebusError as exc:
        return False, str(exc)
    return True, _kafka_detail(h, round_trip=local)


def _kafka_detail(h: probe.KafkaHealth, *, round_trip: bool) -> str:
    if not round_trip:
        return f"{h.brokers} broker(s)"
    return f"{h.brokers} broker(s), round trip {h.round_trip_ms:.0f} ms"


def _probe_pg(
    ends: endpoints.Endpoints, services: list[ServiceStatus], timeout_s: float
) -> Readiness:
    if not any(s.name == "postgres" and (s.running or s.external) for s in services):
        return False, ""
    try:
        h = probe.pg_ready(ends.pg_dsn, timeout_s)
    except RolebusError as exc:
        return False, str(exc)
    return True, _pg_detail(h)


def _pg_detail(h: probe.PgHealth) -> str:
    return f"PostgreSQL {h.server_version}, pgvector {h.vector_version}"


def _check_port_free(port: int, setting: str) -> None:
    exc = ports.bind_error(port)
    if exc is None:
        return
    if ports.in_use(exc):
        raise StackError(
            f"{setting}: 127.0.0.1:{port} is already in use by another process; "
            f"choose another port (e.g. {setting}={port + 1000})"
        ) from exc
    raise StackError(f"{setting}: cannot bind 127.0.0.1:{port}: {exc}") from exc
