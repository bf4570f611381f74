"""The HTTP interface: JSON API, health and (later) FHIR endpoints and the console."""
