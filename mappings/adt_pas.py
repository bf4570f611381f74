"""ADT from the PAS (channel adt-pas): addressed to the trust's EPR, the ward upper-cased."""

from router.message import Message

EPR_APPLICATION, EPR_FACILITY = "EPR", "R0A"


def normalise_adt(message: Message) -> bytes:
    """Address the message to the EPR and upper-case the ward (PV1-3.1).

    An admission without a hospital number (PID-3.1) cannot be filed: it is refused.
    """
    if not message.get("PID-3.1"):
        raise ValueError("no hospital number in PID-3.1")
    sep = message.er7.field_sep
    fields = [segment.split(sep) for segment in message.er7.segments]
    msh = fields[0]
    msh.extend([""] * (6 - len(msh)))
    msh[4], msh[5] = EPR_APPLICATION, EPR_FACILITY
    component = message.er7.encoding[0]
    for segment in fields:
        if segment[0] == "PV1" and len(segment) > 3:
            location = segment[3].split(component)
            location[0] = location[0].upper()
            segment[3] = component.join(location)
    return "\r".join(sep.join(segment) for segment in fields).encode(message.er7.codec)
