"""Units as laboratories write them in OBX-6, and their UCUM codes.

Only units whose meaning is certain are coded; any other unit is kept as written
(``Quantity.unit``) without a UCUM code.
"""

from __future__ import annotations

from typing import Any

from .datatypes import UCUM
from .segments import Composite

# Lower-cased spelling -> UCUM code (case-sensitive in UCUM: mg/dL, not mg/dl).
_UCUM = {
    "%": "%",
    "/min": "/min",
    "10*9/l": "10*9/L",
    "10^9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "x10*9/l": "10*9/L",
    "10*12/l": "10*12/L",
    "10^12/l": "10*12/L",
    "x10^12/l": "10*12/L",
    "fl": "fL",
    "g/dl": "g/dL",
    "g/l": "g/L",
    "iu/l": "[IU]/L",
    "iu/ml": "[IU]/mL",
    "kpa": "kPa",
    "l/l": "L/L",
    "mg/dl": "mg/dL",
    "mg/l": "mg/L",
    "miu/l": "m[IU]/L",
    "ml/min": "mL/min",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73m*2": "mL/min/{1.73_m2}",
    "mmol/l": "mmol/L",
    "mmol/mol": "mmol/mol",
    "mu/l": "mU/L",
    "ng/l": "ng/L",
    "ng/ml": "ng/mL",
    "nmol/l": "nmol/L",
    "pg": "pg",
    "pmol/l": "pmol/L",
    "s": "s",
    "u/l": "U/L",
    "ug/l": "ug/L",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
}


def quantity_unit(units: Composite) -> dict[str, Any]:
    """``unit`` (as written) and, when certain, UCUM ``system`` and ``code`` of an OBX-6."""
    written = units.get(1)
    if not written:
        return {}
    out: dict[str, Any] = {"unit": units.get(2) or written}
    system = (units.get(3) or "").upper()
    code = written if system == "UCUM" else _UCUM.get(written.lower())
    if code:
        out["system"] = UCUM
        out["code"] = code
    return out
