"""Actors: the sans-IO runtime and the node's actors.

Nothing under this package imports asyncio, zmq, lmdb, time, os, random,
socket or threading (tests/unit/test_layering.py enforces it): actors act only
through their `Context`, so the real driver and the simulator run them alike.
"""
