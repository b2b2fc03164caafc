"""Certificates, handshake, session AEAD, ciphertext envelope, named-key algorithms, sealing.

Empty until the PKI and key-service issues land.
"""
