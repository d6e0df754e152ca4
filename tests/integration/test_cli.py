"""The installed ``raftmq`` command, run as users run it."""

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from raftmq.cluster.cli.main import build_parser
from raftmq.cluster.cli.node import node_config
from raftmq.node.config import KEYS, ListenAddress

RAFTMQ = str(Path(sys.executable).parent / "raftmq")
RUN_TIMEOUT = 30.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

# MQTT 3.1.1 CONNECT, clean session, keep alive 60 s, client id "cli-test".
CONNECT = b"\x10\x14\x00\x04MQTT\x04\x02\x00\x3c\x00\x08cli-test"
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


def raftmq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RAFTMQ, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == f"raftmq: error: {message}\n"


def test_help(tmp_path: Path) -> None:
    result = raftmq("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "node" in result.stdout


def test_node_help_documents_every_config_key(tmp_path: Path) -> None:
    result = raftmq("node", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--config", "--listen", "--data-dir", "--node-id", "--log-level"):
        assert flag in result.stdout
    for key in KEYS:
        assert f"  {key.name} = {key.default}\n" in result.stdout


def test_version(tmp_path: Path) -> None:
    result = raftmq("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("raftmq ")


def test_a_command_is_required(tmp_path: Path) -> None:
    result = raftmq(cwd=tmp_path)
    assert result.returncode == 2
    assert "required" in result.stderr


def test_bad_value_in_config_file(tmp_path: Path) -> None:
    (tmp_path / "raftmq.toml").write_text('max_packet_size = "abc"\n')
    result = raftmq("node", "--config", "raftmq.toml", cwd=tmp_path)
    assert_config_error(
        result, "raftmq.toml: key 'max_packet_size': expected an integer, got string 'abc'"
    )


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    (tmp_path / "raftmq.toml").write_text("max_pakcet_size = 10\n")
    result = raftmq("node", "--config", "raftmq.toml", cwd=tmp_path)
    assert_config_error(
        result, "raftmq.toml: unknown key 'max_pakcet_size' (did you mean 'max_packet_size'?)"
    )


def test_missing_config_file(tmp_path: Path) -> None:
    result = raftmq("node", "--config", "raftmq.toml", cwd=tmp_path)
    assert_config_error(
        result, "raftmq.toml: cannot read file: [Errno 2] No such file or directory"
    )


def test_invalid_toml(tmp_path: Path) -> None:
    (tmp_path / "raftmq.toml").write_text("listen = [\n")
    result = raftmq("node", "--config", "raftmq.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("raftmq: error: raftmq.toml: invalid TOML: ")


def test_bad_listen_flag(tmp_path: Path) -> None:
    result = raftmq("node", "--listen", "udp://0.0.0.0:1883", cwd=tmp_path)
    assert_config_error(
        result,
        "command line: key 'listen': unsupported scheme 'udp' in 'udp://0.0.0.0:1883' "
        "(supported: tcp, mqtt, ws, mqtts, wss)",
    )
    tls = raftmq("node", "--listen", "mqtts://0.0.0.0:8883", cwd=tmp_path)
    assert_config_error(
        tls, "command line: listener mqtts://0.0.0.0:8883 needs both 'tls_cert' and 'tls_key'"
    )


def test_flags_win_over_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "raftmq.toml"
    config_file.write_text(
        'listen = "tcp://0.0.0.0:1883"\nnode_id = "file"\ndata_dir = "/file"\nmax_inflight = 3\n'
    )
    args = build_parser().parse_args(
        [
            "node",
            "--config",
            str(config_file),
            "--listen",
            "tcp://127.0.0.1:0",
            "--listen",
            "ws://127.0.0.1:0",
            "--node-id",
            "flag",
            "--log-level",
            "debug",
        ]
    )
    config = node_config(args)
    assert config.listen == [
        ListenAddress("tcp", "127.0.0.1", 0, ""),
        ListenAddress("ws", "127.0.0.1", 0, "/mqtt"),
    ]
    assert config.node_id == "flag"
    assert config.log_level == "debug"
    assert config.data_dir == "/file"
    assert config.max_inflight == 3


def test_c_is_config(tmp_path: Path) -> None:
    """Mosquitto's `-c FILE`: the same option as --config, flags still winning over it."""
    config_file = tmp_path / "raftmq.toml"
    config_file.write_text('node_id = "from-file"\nmax_inflight = 4\n')
    short = build_parser().parse_args(["node", "-c", str(config_file), "--node-id", "flag"])
    assert short.config == str(config_file)
    config = node_config(short)
    assert (config.node_id, config.max_inflight) == ("flag", 4)
    assert build_parser().parse_args(["node", f"-c{config_file}"]).config == str(config_file)


def test_c_with_a_missing_file_names_it(tmp_path: Path) -> None:
    result = raftmq("node", "-c", "nowhere.toml", cwd=tmp_path)
    assert_config_error(
        result, "nowhere.toml: cannot read file: [Errno 2] No such file or directory"
    )


def test_node_started_with_c_serves(tmp_path: Path) -> None:
    """`raftmq node -c FILE` as a Mosquitto user types it, with an mqtt:// listener."""
    config_file = tmp_path / "raftmq.toml"
    config_file.write_text(
        f'listen = "mqtt://127.0.0.1:0"\ndata_dir = "{tmp_path / "data"}"\nnode_id = "c-node"\n'
    )
    with (tmp_path / "stderr").open("w+") as stderr:
        proc = subprocess.Popen(
            [RAFTMQ, "node", "-c", str(config_file)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            line = read_line(proc, START_TIMEOUT)
            prefix = "raftmq node c-node listening on tcp://127.0.0.1:"
            assert line.startswith(prefix), f"stdout: {line!r}\nstderr:\n{_read(stderr)}"
            port = int(line.removeprefix(prefix))
            with socket.create_connection(("127.0.0.1", port), timeout=STOP_TIMEOUT) as client:
                client.sendall(CONNECT)
                assert _recv_exactly(client, len(CONNACK_ACCEPTED)) == CONNACK_ACCEPTED
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(STOP_TIMEOUT) == 0, _read(stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()


def test_no_arguments_means_the_embedded_default() -> None:
    config = node_config(build_parser().parse_args(["node"]))
    assert [a.url() for a in config.listen] == ["tcp://127.0.0.1:1883"]
    assert config.data_dir == "./raftmq-data"
    assert config.anonymous_allowed is True


def test_port_in_use_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = raftmq(
            "node", "--listen", f"tcp://127.0.0.1:{port}", "--data-dir", "data", cwd=tmp_path
        )
    assert result.returncode == 1, result.stderr
    assert "listening on" not in result.stdout
    assert "raftmq: error: cannot start node node1: " in result.stderr
    assert "Traceback" not in result.stderr


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line of the process's stdout, or "" if it ends without one in time."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\n")[0].decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_node_serves_then_stops_gracefully_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    data_dir = tmp_path / "data"
    with (tmp_path / "stderr").open("w+") as stderr:
        proc = subprocess.Popen(
            [RAFTMQ, "node", "--listen", "tcp://127.0.0.1:0", "--data-dir", str(data_dir)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            line = read_line(proc, START_TIMEOUT)
            prefix = "raftmq node node1 listening on tcp://127.0.0.1:"
            assert line.startswith(prefix), f"stdout: {line!r}\nstderr:\n{_read(stderr)}"
            port = int(line.removeprefix(prefix))
            assert port != 0

            with socket.create_connection(("127.0.0.1", port), timeout=STOP_TIMEOUT) as client:
                client.sendall(CONNECT)
                assert _recv_exactly(client, len(CONNACK_ACCEPTED)) == CONNACK_ACCEPTED
                proc.send_signal(sig)
                assert client.recv(1) == b"", "the broker should close client connections"
            assert proc.wait(STOP_TIMEOUT) == 0, _read(stderr)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            assert proc.stdout is not None
            proc.stdout.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read(file: IO[str]) -> str:
    file.seek(0)
    return file.read()
