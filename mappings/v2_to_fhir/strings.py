"""Text made fit for a FHIR string: HL7 escapes can decode to characters FHIR forbids.

FHIR R4 strings hold no code point below 32 but tab, CR and LF, and the string regex
``[ \\r\\n\\t\\S]+`` (JSON Schema: ECMAScript ``\\s``) leaves out every other whitespace
character. ``\\X0C\\`` (a form feed: a page break in a TX report) or a stray ``\\X07\\``
would otherwise reach the Bundle. What each becomes is chosen to keep the text's meaning:

- line and page breaks (VT, FF, FS, GS, RS, NEL, U+2028, U+2029) become a newline;
- other whitespace (US, no-break and typographic spaces) becomes a space;
- U+FEFF (a zero-width no-break space, or a byte order mark) is dropped: it shows nothing;
- any other control character (NUL, BEL, ESC..., DEL, C1 controls) becomes U+FFFD, never
  dropped: a C1 control is often a character of the wrong code page (cp1252's en dash read
  as ISO 8859-1 is U+0096), and dropping it would join ``5`` and ``10`` into ``510``.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
# FHIR: "strings SHALL NOT exceed 1MB (1024*1024 characters) in size". fhir.resources does
# not check it; base64Binary (Attachment.data) has no such limit.
MAX_STRING = 1024 * 1024
_LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_SPACES = "\x1f\xa0\u1680\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
_CONTROLS = [c for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\t\n\r"]
_TABLE: dict[int, str] = {
    **dict.fromkeys(_CONTROLS, REPLACEMENT),
    **dict.fromkeys(map(ord, _SPACES), " "),
    **dict.fromkeys(map(ord, _LINE_BREAKS), "\n"),
    0xFEFF: "",
}


def fhir_string(text: str) -> str:
    """``text`` with the characters a FHIR string forbids replaced (see the module)."""
    return text.translate(_TABLE)
