"""Pure parts of the stack: broker config, topic specs and drift, pid files."""

import os
import subprocess
import sys
from pathlib import Path

from rolebus.config import load_settings
from rolebus.stack import kafka, procs
from rolebus.wal import topics


def _nodes(n: int) -> list[kafka.KafkaNode]:
    return [kafka.KafkaNode(i + 1, 9092 + i, 9192 + i, Path(f"/d/kafka-{i + 1}")) for i in range(n)]


def test_three_node_config_has_static_voters_and_rf3() -> None:
    nodes = _nodes(3)
    props = dict(
        line.split("=", 1) for line in kafka.server_properties(nodes[1], nodes).splitlines()
    )
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194"
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:9093,CONTROLLER://127.0.0.1:9193"
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"


def test_single_node_internal_topics_fit_one_broker() -> None:
    nodes = _nodes(1)
    text = kafka.server_properties(nodes[0], nodes)
    assert "offsets.topic.replication.factor=1\n" in text
    assert "transaction.state.log.min.isr=1\n" in text


def test_cluster_id_is_kafka_shaped() -> None:
    cid = kafka.new_cluster_id()
    assert len(cid) == 22 and "=" not in cid


def test_pinned_kafka_version_is_read_from_the_pom() -> None:
    assert kafka.kafka_version().startswith("4.")


def test_wanted_topics_follow_cluster_size_and_settings() -> None:
    s = load_settings(env={}, config_file=None)
    one = topics.wanted(s, brokers=1)
    assert [t.name for t in one] == [
        "rolebus.wal",
        "rolebus.changes",
        "rolebus.commits",
        "rolebus.rejections",
    ]
    assert one[0].partitions == 12 and one[0].replication_factor == 1
    assert one[0].configs["retention.ms"] == "-1"
    sizes = {t.name: int(t.configs["max.message.bytes"]) for t in one}
    # A commit carries a whole state: room for a full window of the largest messages.
    assert sizes["rolebus.commits"] >= s.message_window * s.max_content_bytes
    assert sizes["rolebus.wal"] == sizes["rolebus.changes"] >= s.max_content_bytes
    three = topics.wanted(s, brokers=3)
    assert three[0].replication_factor == 3 and three[0].configs["min.insync.replicas"] == "2"
    custom = load_settings(
        env={"ROLEBUS_REPLICATION_FACTOR": "2", "ROLEBUS_WAL_PARTITIONS": "6"}, config_file=None
    )
    spec = topics.wanted(custom, brokers=3)[0]
    assert (spec.partitions, spec.replication_factor) == (6, 2)
    assert spec.configs["min.insync.replicas"] == "1"


def test_drift_lists_each_difference() -> None:
    spec = topics.TopicSpec("x", 12, 3, {"retention.ms": "-1", "min.insync.replicas": "2"})
    assert topics.drift(spec, 12, 3, {"retention.ms": "-1", "min.insync.replicas": "2"}) == []
    found = topics.drift(spec, 6, 1, {"retention.ms": "604800000", "min.insync.replicas": "2"})
    assert found == [
        "partitions: wanted 12, has 6",
        "replication factor: wanted 3, has 1",
        "retention.ms: wanted -1, has 604800000",
    ]


def test_pid_file_states(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    assert procs.inspect(pid_file, "marker") == procs.ProcState(None, False, False)
    pid_file.write_text("garbage")
    assert procs.inspect(pid_file, "marker").stale
    # A live process that is not ours (marker absent from its command line) is stale.
    procs.write_pid(pid_file, os.getpid())
    assert procs.inspect(pid_file, "no-such-marker-xyz").stale
    # A live process carrying the marker is alive.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-abc"])
    try:
        procs.write_pid(pid_file, child.pid)
        assert procs.inspect(pid_file, "marker-abc").alive
        assert procs.terminate(child.pid, 5)
        assert procs.inspect(pid_file, "marker-abc").stale
    finally:
        child.kill()
