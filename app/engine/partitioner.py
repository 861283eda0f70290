"""Kafka's default partitioner hash (the Java client's ``Utils.murmur2``), about twice as fast as aiokafka's.

aiokafka's pure-Python ``murmur2`` reads the key a byte at a time and masks after every
step; a worker hashes every new order id it sees (py-spy: 2.7 % of a worker's CPU flat
out). This one reads the key's 32-bit words in one ``struct`` call and masks only where a
product can pass 32 bits. Same result for every input: ``tests/unit/test_partitioner.py``
checks it against aiokafka's on random keys.
"""

from __future__ import annotations

import struct

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` with Kafka's seed, as an unsigned 32-bit integer."""
    length = len(data)
    h = _SEED ^ length
    words = length >> 2
    if words:
        for k in struct.unpack_from(f"<{words}I", data):
            k = (k * _M) & _MASK
            k ^= k >> 24
            h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h ^= data[base]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner (and aiokafka's) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
