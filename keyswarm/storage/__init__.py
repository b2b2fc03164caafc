"""The event log: events, pure folds, LMDB and in-memory logs, snapshots.

Empty until the event-log issue lands.
"""
