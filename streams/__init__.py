"""rolebus.streams: the fold, lifecycle rules, commits, rollback and the faust workers."""
