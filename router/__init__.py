"""tie: a Trust Integration Engine for HL7 v2, FHIR and MESH messaging."""

__version__ = "0.1.0"
