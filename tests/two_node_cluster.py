"""Hosts a two-node Ray cluster on 127.0.0.1 until its standard input closes: ``python tests/two_node_cluster.py``.

Ray's own ``ray.cluster_utils.Cluster`` starts a head node and one worker node, one CPU each, in this
process's environment: start it with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (every Ray address on
loopback) and, for token authentication, ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN``. When the cluster
is up it prints one JSON line: the cluster's address and each node's id and IP. When standard input
closes (the test ends, or the test process dies) it shuts the cluster down.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        print("refusing to start: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 to keep Ray on loopback", file=sys.stderr)
        return 2
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = [{"id": node.node_id, "ip": node.node_ip_address} for node in cluster.list_all_nodes()]
        print(json.dumps({"address": cluster.address, "nodes": nodes}), flush=True)
        sys.stdin.read()  # until the test closes it
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
