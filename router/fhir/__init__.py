"""FHIR support: paths into FHIR JSON, validation with fhir.resources, BaRS, the registry.

Modules here import fhir.resources only when they validate, so that reading a
FHIR message's values stays cheap.
"""

FHIR_JSON = "fhir+json"  # the content type of FHIR JSON messages and deliveries
MEDIA_TYPES = ("application/fhir+json", "application/json")
