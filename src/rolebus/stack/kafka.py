"""Local Apache Kafka nodes in KRaft mode: jars from Maven Central, config, format, start.

Each node is a combined broker + controller with static voters (all nodes of
the cluster share one cluster id). Jars are resolved once by Maven from the
pom shipped in this package and cached outside the data folder, so wiping the
data never re-downloads them.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rolebus.errors import StackError

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
KAFKA_MAIN = "kafka.Kafka"


@dataclass(frozen=True)
class KafkaNode:
    node_id: int
    port: int
    controller_port: int
    home: Path
    """<data>/kafka-<node_id>: config, data (log.dirs), logs and pid file."""

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def config_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def pom_path() -> Path:
    return Path(str(resources.files("rolebus.stack").joinpath("kafka-pom.xml")))


def kafka_version() -> str:
    root = ET.parse(pom_path()).getroot()
    found = root.find("m:properties/m:kafka.version", POM_NS)
    if found is None or not found.text:
        raise StackError(f"{pom_path()}: no <kafka.version> property")
    return found.text.strip()


def default_libs_dir() -> Path:
    return Path.home() / ".cache" / "rolebus" / f"kafka-{kafka_version()}" / "libs"


def ensure_jars(libs_dir: Path) -> Path:
    """Resolve the broker's jars with Maven into ``libs_dir`` (once)."""
    marker = libs_dir / ".complete"
    if marker.exists():
        return libs_dir
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is not on PATH: install Maven to fetch the Kafka jars")
    libs_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-B", "-q", "-f", str(pom_path()), "dependency:copy-dependencies",
        f"-DoutputDirectory={libs_dir}", "-DincludeScope=runtime",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise StackError(
            "could not resolve the Kafka jars from Maven Central "
            f"(`{' '.join(cmd)}` exited {proc.returncode}):\n" + "\n".join(tail)
        )
    marker.write_text(kafka_version() + "\n")
    return libs_dir


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own Uuid.randomUuid, never one starting with '-' (CLI tools
    would read it as an option).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def server_properties(node: KafkaNode, nodes: list[KafkaNode]) -> str:
    """The broker config. Internal topics replicate as far as the cluster allows."""
    n = len(nodes)
    rf, isr = min(3, n), max(1, min(3, n) - 1)
    voters = ",".join(f"{m.node_id}@127.0.0.1:{m.controller_port}" for m in nodes)
    props = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node.data_dir,
        "num.partitions": 1,
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        # Topics are created on purpose (`rolebus topics ensure`, the worker's changelog),
        # so a typo in a topic name fails instead of silently creating a topic.
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": 0,
        "unclean.leader.election.enable": "false",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def log4j2_properties(node: KafkaNode) -> str:
    log = node.log_file
    return f"""status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def java_cmd(libs_dir: Path, node: KafkaNode, heap: str, main: str, *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        raise StackError("Java is not on PATH: install a Java 17 runtime to run the Kafka broker")
    return [
        java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={node.home / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={node.log_file.parent}",
        "-cp", f"{libs_dir}/*", main, *args,
    ]  # fmt: skip


def write_config(node: KafkaNode, nodes: list[KafkaNode]) -> None:
    node.log_file.parent.mkdir(parents=True, exist_ok=True)
    node.config_file.write_text(server_properties(node, nodes))
    (node.home / "log4j2.properties").write_text(log4j2_properties(node))


def format_storage(libs_dir: Path, node: KafkaNode, cluster_id: str) -> None:
    """Format log.dirs once; a formatted folder keeps its data."""
    if (node.data_dir / "meta.properties").exists():
        return
    cmd = java_cmd(
        libs_dir, node, "256m", "kafka.tools.StorageTool",
        "format", f"--cluster-id={cluster_id}", "-c", str(node.config_file),
    )  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StackError(
            f"kafka node {node.node_id}: formatting {node.data_dir} failed:\n"
            + (proc.stdout + proc.stderr).strip()[-2000:]
        )


def start(libs_dir: Path, node: KafkaNode, heap: str) -> int:
    """Start the broker detached (re-parented to init, own session); return its pid.

    A shell backgrounds it so the broker is never our child: it outlives this
    command and never lingers as our zombie.
    """
    cmd = java_cmd(libs_dir, node, heap, KAFKA_MAIN, str(node.config_file))
    script = 'exec "$@" >>"$ROLEBUS_LOG" 2>&1 </dev/null & echo $!'
    env = {**os.environ, "ROLEBUS_LOG": str(node.home / "logs" / "stdout.log")}
    proc = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *cmd], env=env, cwd=node.home,
        capture_output=True, text=True, check=False, start_new_session=True,
    )  # fmt: skip
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise StackError(f"kafka node {node.node_id}: could not start java: {proc.stderr.strip()}")
    return int(proc.stdout.strip())


def log_tail(node: KafkaNode, lines: int = 20) -> str:
    for path in (node.home / "logs" / "stdout.log", node.log_file):
        if path.exists():
            text = path.read_text(errors="replace").strip().splitlines()
            if text:
                return "\n".join(text[-lines:])
    return "(no log output)"
