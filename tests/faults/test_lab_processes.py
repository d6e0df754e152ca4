"""The lab's process faults: kill -9 and a restart on the same data dir, SIGSTOP and SIGCONT."""

from __future__ import annotations

import pytest
from lab import LISTENING, Lab, thread_states
from probes import mqtt_connack, mqtt_probe


def test_kill_then_start_on_the_same_data_dir(lab: Lab) -> None:
    node = lab.nodes["n3"]
    first_pid = node.pid
    node.kill()
    assert not node.running
    with pytest.raises(ConnectionRefusedError), mqtt_probe(node):
        pass
    assert any(node.data_dir.iterdir()), "kill -9 must leave the node's data behind"

    node.start()
    assert node.running
    assert node.pid != first_pid
    assert node.output().count(LISTENING) == 2, "one log, appended to by both runs"
    assert mqtt_connack(node, "probe-restarted") == 0


def test_pause_stops_every_thread_until_resume(lab: Lab) -> None:
    node = lab.nodes["n2"]
    with mqtt_probe(node) as client:
        assert client.connect("probe-paused") == 0
        node.pause()
        states = thread_states(node.pid or 0)
        assert len(states) > 1 and set(states) == {"T"}, states
        assert node.paused
        with pytest.raises(TimeoutError):
            client.ping()
        # The kernel still completes the handshake of a new connection; nothing answers.
        with pytest.raises(TimeoutError):
            mqtt_connack(node, "probe-while-paused", timeout=0.5)

        node.resume()
        assert not node.paused
        client.ping(timeout=5)
