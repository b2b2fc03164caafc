"""Transport: the message codec, the wire envelope, and the transports.

- `codec`: the message registry (`@message(tag=..., op=...)`), msgpack
  encoding, decoding limits and validation. Every decode failure is a
  `DecodeError`.
- `frames`: the envelope `[version, kind, request_id, body]`, client requests
  and replies, peer actor frames.

This package file imports nothing on purpose: importing `keyswarm.transport`
must not pull in msgpack or zmq.
"""
