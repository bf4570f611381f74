"""Building FHIR R4 resources from HL7 v2 segments; used by ``pathology_fhir``.

The resources are plain JSON dicts: absent HL7 fields leave their FHIR elements out.
"""
