"""The local three-node cluster, started once for tests/cluster and stopped after.

``make test`` runs these tests (the short cluster drill is part of issue 13's promise), so a
machine that cannot start the cluster FAILS them, saying why. Only
``SWITCHBOARD_TEST_CLUSTER=skip`` (a developer without root or RabbitMQ installed) turns that
into a skip: CI never sets it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster import cluster

SKIP_VARIABLE = "SWITCHBOARD_TEST_CLUSTER"


@pytest.fixture(scope="package")
def cluster_url() -> Iterator[str]:
    """SWITCHBOARD_AMQP_URL for the cluster (every node), on a vhost of this test process.

    Package-scoped: in ``make test`` the cluster stops once tests/cluster is done, instead of
    idling beside the rest of the suite on the machine's two cores."""
    problem = cluster.available()
    if problem:
        reason = f"cannot start the local RabbitMQ cluster: {problem}"
        if os.environ.get(SKIP_VARIABLE) == "skip":
            pytest.skip(f"{reason} ({SKIP_VARIABLE}=skip)")
        pytest.fail(f"{reason}; set {SKIP_VARIABLE}=skip to skip the cluster tests here", pytrace=False)
    with cluster.running_cluster() as url:
        yield url
