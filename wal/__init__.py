"""rolebus.wal: the log. Event model, Avro codec, producer client, WAL reader."""
