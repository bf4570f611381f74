"""The DPS handoff (List Reconciliation): GP extracts to DPS, DPS results to PCSE as CSVs.

``filename`` validates a GP extract's name, ``results`` reads DPS's JSON Lines
and writes the CSVs and emails, ``jobs`` keeps one row per extract. The two
channels are configuration (``examples/dps-handoff/``) plus the mapping
``mappings/dps_handoff.py``; see docs/dps-handoff.md.
"""
