"""The engine's murmur2 gives exactly what aiokafka's (the Java client's) gives."""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as reference
from hypothesis import given
from hypothesis import strategies as st

from app.engine.partitioner import murmur2, partition_of


@given(st.binary(max_size=300))
def test_the_same_hash_as_aiokafka_for_any_key(key: bytes) -> None:
    assert murmur2(key) == reference(key) & 0xFFFFFFFF


def test_known_keys_land_where_the_java_client_puts_them() -> None:
    # Kafka's own test vectors (UtilsTest.testMurmur2, as signed 32-bit results).
    vectors = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, signed in vectors.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key
    assert partition_of(b"order-1", 8) == (reference(b"order-1") & 0x7FFFFFFF) % 8
