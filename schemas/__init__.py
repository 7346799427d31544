"""Avro schemas (.avsc): the wire contract of the WAL, loaded with importlib.resources."""
