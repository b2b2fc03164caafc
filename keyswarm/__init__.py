"""keyswarm: a peer-to-peer network of nodes serving hardware-rooted key operations."""

__version__ = "0.1.0"
