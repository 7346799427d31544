"""rolebus.streams: folding the WAL into per-role state, commits and outputs.

Two rooms:

* ``rolebus.streams.core`` — the pure fold: state, rules, mutators, commits,
  outcomes, the dedupe window, ``apply_event``, the ``Folder`` step and
  ``fold_log`` (the one whole-log fold, which replay uses);
* ``rolebus.streams.runtime`` — the worker: a plain aiokafka consumer-group
  batch loop, the state changelog and its restore, the commit store (rollback
  targets and fork sources read back from Kafka) and the process around it.
"""
