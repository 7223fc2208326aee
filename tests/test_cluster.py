"""The sweep on a real two-node Ray cluster on this machine, token authentication, and Ray kept on loopback.

The cluster (``tests/two_node_cluster.py``, Ray's own ``ray.cluster_utils.Cluster``) and every sweep run
in subprocesses: the test process's shared Ray session (conftest.py) stays untouched, and the cluster
gets its own fresh token instead of ``~/.ray/auth_token``. Every Ray starts with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, so every Ray address is 127.0.0.1: the cluster and the sweeps
get it from their environment; the local-sweep probe from the sweep command, checked before it starts Ray.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pyarrow.parquet as pq
import pytest
from test_user_code import STREAMS

REPO = Path(__file__).resolve().parent.parent
CLUSTER_HOST = Path(__file__).with_name("two_node_cluster.py")
CLUSTER_START_TIMEOUT_S = 120
SWEEP_TIMEOUT_S = 240


def loopback_environment(**changes: str) -> Dict[str, str]:
    """This process's environment for a subprocess: Ray on loopback, no RAY_ADDRESS, W&B off, plus changes."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", WANDB_MODE="disabled", **changes)
    return env


def sweep_command(*args: str, space: str = "smoke") -> List[str]:
    return [sys.executable, "-m", "ness_sweep.run", f"space={space}", "wandb.mode=disabled", "sweep.confirm_top=0",
            *args]


# ---- what a process tree listens on -----------------------------------------------------------

def process_tree(root_pid: int) -> Set[int]:
    """root_pid and all its descendants, from /proc."""
    children = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        children[int(after_name[1])].append(int(stat.parent.name))
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children[pid])
    return tree


def _socket_inodes(pids: Set[int]) -> Set[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        except OSError:
            continue  # ended meanwhile
    return inodes


def _proc_net_address(hex_address: str) -> ipaddress._BaseAddress:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    address = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    return getattr(address, "ipv4_mapped", None) or address


def listening_addresses(root_pid: int) -> Set[Tuple[str, int]]:
    """(IP, port) of every TCP socket that root_pid or a descendant listens on."""
    inodes = _socket_inodes(process_tree(root_pid))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host, port = local.split(":")
                found.add((str(_proc_net_address(host)), int(port, 16)))
    return found


def test_listening_addresses_sees_a_socket_bound_to_all_interfaces():
    """The check below can fail: a listener on 0.0.0.0 shows up as 0.0.0.0 (bound, never connected to)."""
    child = subprocess.Popen([sys.executable, "-c", "import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', 0)); "
                              "s.listen(); print(s.getsockname()[1], flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        assert ("0.0.0.0", port) in listening_addresses(child.pid)
    finally:
        child.stdin.close()
        child.wait(10)


# ---- the cluster ------------------------------------------------------------------------------

@dataclass
class RunningCluster:
    address: str
    node_ids: List[str]
    node_ips: List[str]
    env: Dict[str, str]  # what a driver needs to join: loopback, RAY_AUTH_MODE=token, RAY_AUTH_TOKEN
    host_pid: int


@pytest.fixture(scope="module")
def cluster():
    """Two one-CPU Ray nodes on 127.0.0.1 with token authentication (a fresh token); shut down at the end,
    also when a test fails: closing the host's standard input shuts the cluster down, and Ray's reaper
    ends the nodes should the host itself die."""
    env = loopback_environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    host = subprocess.Popen([sys.executable, str(CLUSTER_HOST)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=REPO)
    try:
        ready, _, _ = select.select([host.stdout], [], [], CLUSTER_START_TIMEOUT_S)
        line = host.stdout.readline() if ready else ""
        assert line, f"the cluster did not start within {CLUSTER_START_TIMEOUT_S} s (host exit code {host.poll()})"
        started = json.loads(line)
        yield RunningCluster(started["address"], [n["id"] for n in started["nodes"]],
                             [n["ip"] for n in started["nodes"]], env, host.pid)
    finally:
        host.stdin.close()
        try:
            host.wait(timeout=60)
        except subprocess.TimeoutExpired:
            host.kill()  # the nodes' reaper ends them when the host goes
            host.wait()


@pytest.fixture(scope="module")
def cluster_sweep(cluster, tmp_path_factory):
    """The smoke space, 4 one-CPU trials, on the two-node cluster through ray.address."""
    output_dir = tmp_path_factory.mktemp("cluster_sweep")
    done = subprocess.run(
        sweep_command(f"ray.address={cluster.address}", f"output_dir={output_dir}", "sweep.name=on_cluster",
                      "sweep.num_samples=4", "train.epochs=1", "trial.cpu=1", "sweep.scheduler=fifo"),
        capture_output=True, text=True, env=cluster.env, cwd=REPO, timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"dir": output_dir / "on_cluster", "stdout": done.stdout, "listening": listening_addresses(cluster.host_pid)}


def test_cluster_is_two_nodes_on_loopback(cluster):
    assert cluster.address.startswith("127.0.0.1:")
    assert cluster.node_ips == ["127.0.0.1", "127.0.0.1"]
    assert len(set(cluster.node_ids)) == 2


def test_sweep_runs_trials_on_both_nodes_and_writes_output_dir(cluster, cluster_sweep):
    assert "4 trials of search_spaces/smoke.yaml, 2 at a time" in cluster_sweep["stdout"]
    rows = pq.read_table(cluster_sweep["dir"] / "results.parquet").to_pylist()
    assert len(rows) == 4
    assert {row["status"] for row in rows} == {"TERMINATED"}
    assert all(row["acc"] is not None and row["task"] == 5 for row in rows)
    assert {row["node_id"] for row in rows} == set(cluster.node_ids)  # both nodes ran trials
    assert {row["node_ip"] for row in rows} == {"127.0.0.1"}
    assert (cluster_sweep["dir"] / "best.yaml").is_file()


def test_cluster_listens_on_loopback_only(cluster_sweep):
    """After the sweep (workers started on both nodes), every listening socket of the cluster is on 127.0.0.1."""
    listening = cluster_sweep["listening"]
    assert len(listening) >= 4  # at least a GCS and two raylets, and more
    assert {ip for ip, _ in listening} == {"127.0.0.1"}


def test_driver_with_a_wrong_token_is_refused_before_writing(cluster, tmp_path):
    env = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64, "RAY_NUM_REDIS_GET_RETRIES": "2"}  # refuse in ~2 s, not 20
    done = subprocess.run(sweep_command(f"ray.address={cluster.address}", f"output_dir={tmp_path}"),
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: ray.address={cluster.address}" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_driver_without_any_token_gets_a_one_line_error(cluster, tmp_path):
    env = {key: value for key, value in cluster.env.items() if key != "RAY_AUTH_TOKEN"}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    output_dir = tmp_path / "results"
    done = subprocess.run(sweep_command(f"ray.address={cluster.address}", f"output_dir={output_dir}"),
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: ray.address={cluster.address}" in done.stderr
    assert not output_dir.exists()


# ---- a local sweep ----------------------------------------------------------------------------

LOCAL_SWEEP_PROBE = """
import contextlib, io, json, os, sys
sys.path.insert(0, {tests!r})
from ness_sweep import run
with contextlib.redirect_stdout(io.StringIO()):
    run.main(["--help"])  # decides Ray's networking and imports the sweep (and Ray); starts nothing
from ray._private import ray_constants
if ray_constants.ENABLE_RAY_CLUSTER:  # never start a Ray that could bind beyond loopback
    print(json.dumps({{"cluster_networking": True}}))
    sys.exit(0)
import ray
from ness_sweep.sweep import plan as planning, tuner
from test_cluster import listening_addresses
tuner.connect_ray(planning.build_plan(["space=smoke", "output_dir=" + {output_dir!r}]))
try:
    print(json.dumps({{"cluster_networking": False, "gcs": ray.get_runtime_context().gcs_address,
                      "nodes": [node["NodeManagerAddress"] for node in ray.nodes()],
                      "listening": sorted(listening_addresses(os.getpid()))}}))
finally:
    ray.shutdown()
"""


def test_local_sweep_starts_ray_on_loopback_only(tmp_path):
    """In a process whose environment does not set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, the sweep command turns
    Ray's cluster networking off before Ray is imported (the probe starts Ray only if it did), and
    connect_ray's local Ray then has its GCS, its node and every listening socket on 127.0.0.1."""
    env = {key: value for key, value in loopback_environment().items() if key != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    probe = LOCAL_SWEEP_PROBE.format(tests=str(Path(__file__).parent), output_dir=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    local = json.loads(done.stdout.strip().splitlines()[-1])
    assert local["cluster_networking"] is False
    assert local["gcs"].startswith("127.0.0.1:")
    assert local["nodes"] == ["127.0.0.1"]
    assert len(local["listening"]) >= 2  # at least the GCS and the raylet
    assert {ip for ip, _ in local["listening"]} == {"127.0.0.1"}


# ---- the user's own code on the cluster ---------------------------------------------------------

USER_NETS = '''
import os
from torch import nn

def build(stream):
    """Notes where this module was imported from, in the process that builds the model."""
    with open({probe!r}, "a") as notes:
        notes.write(os.path.abspath(__file__) + "\\n")
    body = nn.Sequential(nn.Linear(stream.input_shape[0], 16), nn.ReLU())
    heads = nn.ModuleList(nn.Linear(16, task.num_classes) for task in stream.tasks)
    model = nn.Module()
    model.body, model.heads = body, heads
    model.forward = lambda x, task: heads[task](body(x))
    return model
'''


def test_a_sweep_ships_the_users_modules_to_the_cluster(cluster, tmp_path):
    """The user's benchmark and model live in a folder only the driver can import (its PYTHONPATH; it runs
    from another folder, and the nodes were started without either), and so does its method (examples/ on the
    PYTHONPATH, its setting searched): the trials on both nodes import them from what the sweep shipped
    through runtime_env py_modules, and train."""
    code, elsewhere, probe = tmp_path / "code", tmp_path / "elsewhere", tmp_path / "imported_from.txt"
    code.mkdir()
    elsewhere.mkdir()
    (code / "user_streams.py").write_text(STREAMS)  # 3 tasks of Gaussian blobs
    (code / "user_nets.py").write_text(USER_NETS.format(probe=str(probe)))
    (elsewhere / "space.yaml").write_text("search:\n  l2pull.strength: {loguniform: [0.01, 10.0]}\n"
                                          "fixed:\n  method: my_method:L2Pull\n")
    env = {**cluster.env, "PYTHONPATH": os.pathsep.join([str(code), str(REPO / "examples")])}
    done = subprocess.run(
        sweep_command(f"ray.address={cluster.address}", f"output_dir={tmp_path / 'out'}", "sweep.name=user_code",
                      "benchmark=user_streams:make", "model=user_nets:build", "sweep.num_samples=2",
                      "train.epochs=1", "trial.cpu=1", "sweep.scheduler=fifo", space="space.yaml"),
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=SWEEP_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = pq.read_table(tmp_path / "out" / "user_code" / "results.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["TERMINATED", "TERMINATED"], [row["error"] for row in rows]
    assert all(len(row["acc_matrix"]) == 3 for row in rows)
    assert {row["method"] for row in rows} == {"my_method:L2Pull"}
    assert all(set(dict(row["diagnostics"][-1])) == {"distance", "penalty"} for row in rows)  # the method ran
    imported_from = probe.read_text().splitlines()
    driver = str(code / "user_nets.py")
    assert driver in imported_from  # the driver's check builds the model once from the user's folder
    shipped = [path for path in imported_from if path != driver]
    assert shipped and all("runtime_resources" in path for path in shipped), imported_from  # trials: Ray's copy
