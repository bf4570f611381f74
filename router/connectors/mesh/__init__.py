"""MESH: a mailbox poller (source) and a sender (destination) built on ``mesh-client``."""
