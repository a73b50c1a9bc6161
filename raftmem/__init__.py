"""raftmem: a strongly consistent, replicated memory store for fleets of AI agents."""

__version__ = "0.1.0"
