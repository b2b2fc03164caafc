"""Transport: the message codec, the wire envelope, and the transports.

- `codec`: the message registry (`@message(tag=..., op=...)`), msgpack
  encoding, decoding limits and validation. Every decode failure is a
  `DecodeError`.
- `schema`: field annotations compiled into per-class encoders and
  validators (the codec's inner loop).
- `frames`: the envelope `[version, kind, request_id, body]`, client requests
  and replies, peer actor frames.
- `zmq_sockets`: ZeroMQ sockets with the options of DESIGN section 5, and
  the translation of ZeroMQ errors into keyswarm's.

This package file imports nothing on purpose: importing `keyswarm.transport`
must not pull in msgpack or zmq.
"""
