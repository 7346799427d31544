"""The stream worker: a plain aiokafka consumer-group batch loop around the pure fold.

``worker`` (the loop, the fold of a batch with fork waits, and the rebalance
hand-over), ``changelog`` (the state changelog: record format and restore),
``commitstore`` (commits read back from the commits topic: rollback targets
and fork sources, behind an index and a bounded cache), ``delivery`` (records
sent in producer batches), ``spans`` (one span per batch, linked to every
record's producer span), ``options`` (the knobs) and ``process`` (``rolebus
worker``: topics, logging, signals).
"""
