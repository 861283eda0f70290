"""The engine under every stage: batched partition steps, transactional commits, checkpointed state.

``runtime`` (the loop, steps, commits, rebalances), ``step`` (what a handler sees),
``store`` (one RocksDB database per partition number), ``recovery`` (checkpoint rule and
changelog restore), ``assignor`` (partition numbers to workers, owners to everyone),
``dead_letters`` (what a failed message becomes).
"""
