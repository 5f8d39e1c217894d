"""The local three-node cluster, started once for tests/cluster and stopped after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import cluster


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """SWITCHBOARD_AMQP_URL for the cluster (every node), on a vhost of this test process."""
    problem = cluster.available()
    if problem:
        pytest.skip(f"no local RabbitMQ cluster: {problem}")
    with cluster.running_cluster() as url:
        yield url
