"""The stream worker: a plain aiokafka consumer-group batch loop around the pure fold.

``options`` (the knobs), ``plan`` (which records of a batch fold now, fork
waits included; pure), ``changelog`` (the state changelog: record format and
restore), ``commitstore`` (commits read back from the commits topic: rollback
targets and fork sources, behind an index and a bounded cache), ``spans``
(one span per batch, linked to every record's producer span), ``worker`` (the
loop and the rebalance hand-over) and ``process`` (``rolebus worker``: topics,
logging, signals).
"""
