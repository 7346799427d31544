"""Replay: prove the WAL reproduces the outputs, and rebuild a role's state as
of any point. Reads topics only; never writes to them, never joins a group.

``core`` is the one module importing ``rolebus.streams`` (the fold replayed);
``verify`` and ``points`` are pure; ``scan`` and ``run`` do the Kafka reading.
It lives outside ``rolebus.wal`` because it needs the fold, and the dependency
direction is schemas <- wal <- streams <- replay.
"""
