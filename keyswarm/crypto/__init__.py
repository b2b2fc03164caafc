"""Cryptography of the network's trust model.

- `certificates`: X.509 root / node / sub-key / client certificates signed
  through a token, identity URIs, network ids.
- `chain_verify`: chain verification with a reason on every failure.
- `sealing`: secrets sealed to a token (at rest) or to an X25519 key (HPKE),
  and the domain key.
"""
