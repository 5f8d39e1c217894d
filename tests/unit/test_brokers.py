"""Broker addresses and what the topology says explicitly per RabbitMQ version."""

from __future__ import annotations

import random

import pytest

from worker import brokers, topology


def test_one_url_is_a_list_of_one() -> None:
    """SWITCHBOARD_AMQP_URL with one address works as it always did."""
    url = "amqp://user:secret@rabbit:5672/switchboard"
    assert brokers.broker_urls(url) == [url]


def test_short_entries_borrow_the_first_urls_credentials_and_vhost() -> None:
    """host:port entries get the first URL's scheme, credentials, vhost and options."""
    urls = brokers.broker_urls("amqps://u:p%2C@r0:5671/sb?heartbeat=30, r1:5671 ,amqp://x:y@other/v")
    assert urls == [
        "amqps://u:p%2C@r0:5671/sb?heartbeat=30",
        "amqps://u:p%2C@r1:5671/sb?heartbeat=30",
        "amqp://x:y@other/v",
    ]


@pytest.mark.parametrize("setting", ["", " , ", "rabbit:5672,amqp://u:p@r1/"])
def test_a_list_must_start_with_a_full_url(setting: str) -> None:
    """No address, or a first entry without a scheme, is an error (not a silent default)."""
    with pytest.raises(brokers.BrokerURLError):
        brokers.broker_urls(setting)


def test_addresses_never_show_credentials() -> None:
    """What logs and errors show of a URL is host:port only."""
    assert brokers.address("amqp://user:hunter2@rabbit-1:5682/v") == "rabbit-1:5682"
    assert brokers.address("amqps://user:hunter2@rabbit-1/v") == "rabbit-1:5671"


def test_order_is_random_and_the_lost_node_comes_last() -> None:
    """Every node gets tried first sometimes; after a loss the lost node is tried last."""
    urls = [f"amqp://g:g@n{i}/" for i in range(3)]
    random.seed(7)
    firsts = {brokers.connection_order(urls)[0] for _ in range(60)}
    assert firsts == set(urls)
    for _ in range(20):
        order = brokers.connection_order(urls, last=urls[1])
        assert order[-1] == urls[1] and sorted(order) == sorted(urls)


def _layout() -> topology.Topology:
    return topology.build({"pidj": ["send_text"]}, delivery_limit=7)


def _arguments(layout: topology.Topology, name: str) -> dict[str, object]:
    return next(q.arguments for q in layout.queues if q.name == name)


def test_every_quorum_queue_asks_for_three_replicas() -> None:
    """Each quorum queue is declared with an initial group size of 3."""
    for queue in _layout().queues:
        assert queue.arguments["x-queue-type"] == "quorum"
        assert queue.arguments["x-quorum-initial-group-size"] == 3, queue.name


@pytest.mark.parametrize("version", ["4.0.5", "4.3.1", "5.0.0", ""])
def test_on_rabbitmq_4_the_dead_letter_queue_has_no_delivery_limit(version: str) -> None:
    """4.x (or an unknown version): switchboard.dead gets x-delivery-limit -1; vendor queues keep ours."""
    layout = topology.for_broker(_layout(), version)
    assert _arguments(layout, topology.DEAD_QUEUE)["x-delivery-limit"] == -1
    assert _arguments(layout, topology.vendor_queue("pidj"))["x-delivery-limit"] == 7


@pytest.mark.parametrize("version", ["3.10.8", "3.13.7"])
def test_on_rabbitmq_3_the_dead_letter_queue_gets_no_limit_argument(version: str) -> None:
    """3.x has no default limit and would read -1 literally (drop on first return): send nothing."""
    layout = topology.for_broker(_layout(), version)
    assert "x-delivery-limit" not in _arguments(layout, topology.DEAD_QUEUE)
    assert _arguments(layout, topology.vendor_queue("pidj"))["x-delivery-limit"] == 7


def test_an_old_dead_letter_queue_on_4_gets_the_policy_to_apply() -> None:
    """The warning for an existing switchboard.dead on 4.x names the policy that lifts its limit."""
    dead = next(q for q in topology.for_broker(_layout(), "4.1.0").queues if q.name == topology.DEAD_QUEUE)
    warning = topology.existing_queue_warning(dead, "inequivalent arg 'x-delivery-limit'")
    assert "set_policy switchboard-dead '^switchboard\\.dead$' '{\"delivery-limit\":-1}'" in warning


def test_a_bad_address_list_is_a_config_error_at_start() -> None:
    """A list whose first entry is not a URL stops the worker with one line naming the setting."""
    from worker.config import ConfigError, load_settings

    with pytest.raises(ConfigError) as caught:
        load_settings({"SWITCHBOARD_AMQP_URL": "rabbit-0:5672,amqp://u:secret@rabbit-1/"})
    assert caught.value.lines[0].startswith("SWITCHBOARD_AMQP_URL: ")
    assert "secret" not in str(caught.value)
