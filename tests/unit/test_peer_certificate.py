"""A client certificate's names as stored with each message (RFC 4514 order and escapes)."""

from __future__ import annotations

from router.connectors.mllp.peer_certificate import client_keys, distinguished_name


def test_a_subject_is_written_most_specific_first_with_short_names():
    subject = (
        (("countryName", "GB"),),
        (("organizationName", "Trust, North"),),
        (("organizationalUnitName", "Pathology"), ("commonName", " lab+1")),
    )
    assert distinguished_name(subject) == r"OU=Pathology+CN=\ lab\+1,O=Trust\, North,C=GB"


def test_the_search_key_is_the_subject_cut_to_the_key_column():
    assert client_keys({"tls": "TLSv1.3"}) == ()
    [(key, value)] = client_keys({"client_subject": "CN=" + "x" * 300})
    assert (key, len(value)) == ("tls_client", 255)
