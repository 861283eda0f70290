"""One catalogue of message types: every other table of types is read from it."""

from __future__ import annotations

from schemas import catalogue, envelope, payloads, registry


def test_the_envelope_registry_payloads_and_topics_read_the_one_catalogue() -> None:
    assert envelope.EVENT_TYPES is catalogue.EVENT_TYPES
    assert envelope.COMMAND_TYPES is catalogue.COMMAND_TYPES
    assert registry.TOPIC_TYPES is catalogue.TOPIC_TYPES
    assert registry.CURRENT_VERSION is catalogue.CURRENT_VERSION
    assert not hasattr(payloads, "RECORDS")  # the records are rows of the catalogue
    from app import topics
    from app.domain import common

    assert tuple(topics.NAMES) == catalogue.TOPICS
    assert common.ORDERS == catalogue.ORDERS


def test_every_type_has_a_kind_a_topic_and_a_version() -> None:
    assert set(catalogue.CATALOGUE) == catalogue.EVENT_TYPES | catalogue.COMMAND_TYPES
    assert not catalogue.EVENT_TYPES & catalogue.COMMAND_TYPES
    for name, t in catalogue.CATALOGUE.items():
        assert t.name == name and t.topics and t.version >= 1, name
        assert t.topics <= {*catalogue.TOPICS, catalogue.DEAD_LETTER}, name
        assert registry.current_version(name) == t.version
    for topic in catalogue.TOPICS:
        assert catalogue.TOPIC_TYPES[topic], f"nothing travels on {topic}"


def test_payload_checks_use_the_catalogue_s_records() -> None:
    import pytest

    payloads.check_payload("inventory.reserve", {"order_id": "o", "product_id": "p", "quantity": 1})
    with pytest.raises(payloads.PayloadError):
        payloads.check_payload("inventory.reserve", {"order_id": "o", "product_id": "p", "quantity": "1"})
