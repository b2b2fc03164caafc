"""Hardware roots of trust.

- `token`: the `Token` interface every root of trust implements.
- `soft_token`: keys in a 0600 file, optional scrypt passphrase; NOT hardware-protected.
- `virtual_yubikey` (+ `virtual_piv`, `virtual_otp`): an APDU-level YubiKey 5
  emulator that yubikit's sessions run on unmodified (tests, the simulator).

Only the hardware actor's service thread calls a token.
"""
