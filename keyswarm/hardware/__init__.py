"""Hardware roots of trust: the Token interface, SoftToken, YubiKeyToken, VirtualYubiKey.

Empty until the hardware issue lands; nothing else may talk to a token.
"""
