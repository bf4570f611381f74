"""HL7 v2 over MLLP: the framing, the listener (source) and the sender (destination)."""
