"""The Python client library (async and sync), routing view and retries.

The foundation's minimal client lives in `keyswarm.client.plain`.
"""
