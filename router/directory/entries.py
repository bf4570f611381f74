"""Directory entries: one checked endpoint, and the ``config/endpoints.yaml`` file that seeds them.

A file entry names one key, one transport address and several interactions; it is
expanded into one :class:`Endpoint` per interaction, and every problem is reported with
the file and entry it is in, like the channel files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from router.config import ConfigError, ConfigProblem
from router.config.loading import error_message, key_path, read_yaml
from router.directory.keys import KINDS, TRANSPORTS, Key, check_address, make_key

SCOPES = ("addressed", "all")
Scope = Literal["addressed", "all"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str
    identifier: str
    interaction: str
    transport: str
    address: str
    scope: str = "addressed"
    name: str = ""
    origin: str = "operator"

    @property
    def key(self) -> Key:
        return Key(self.kind, self.identifier)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_endpoint(
    key: Key,
    interaction: str,
    transport: str,
    address: str,
    *,
    scope: str = "addressed",
    name: str = "",
    origin: str = "operator",
) -> Endpoint:
    """A checked endpoint: ValueError names the first thing wrong."""
    interaction = interaction.strip()
    if not interaction or len(interaction) > 255:
        raise ValueError("an interaction is 1 to 255 characters")
    if scope not in SCOPES:
        raise ValueError(f"scope is one of {', '.join(SCOPES)}, not {scope!r}")
    return Endpoint(
        key.kind,
        key.identifier,
        interaction,
        transport,
        check_address(transport, address),
        scope,
        name.strip()[:255],
        origin,
    )


class _EntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ods: str | None = None
    dos: str | None = None
    asid: str | None = None
    name: str = ""
    interactions: list[str] = Field(min_length=1)
    fhir: str | None = None
    mllp: str | None = None
    mesh: str | None = None
    scope: Scope = "addressed"

    @model_validator(mode="after")
    def _one_each(self) -> _EntryModel:
        for group in (KINDS, TRANSPORTS):
            present = [n for n in group if getattr(self, n) is not None]
            if len(present) != 1:
                raise ValueError(f"an entry needs exactly one of {', '.join(group)}")
        return self

    def endpoints(self) -> list[Endpoint]:
        kind = next(k for k in KINDS if getattr(self, k) is not None)
        transport = next(t for t in TRANSPORTS if getattr(self, t) is not None)
        key = make_key(kind, str(getattr(self, kind)))
        return [
            make_endpoint(
                key,
                interaction,
                transport,
                str(getattr(self, transport)),
                scope=self.scope,
                name=self.name,
                origin="config",
            )
            for interaction in self.interactions
        ]


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[_EntryModel] = Field(default_factory=list)


def load_endpoints_file(path: Path) -> list[Endpoint]:
    """Every endpoint in ``path``; a ConfigError names the file, entry and problem."""
    data = read_yaml(path)
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            ConfigProblem(str(path), key_path(e["loc"]), error_message(e, _FileModel))
            for e in exc.errors()
        ) from exc
    found: dict[tuple[str, str, str, str], Endpoint] = {}
    problems = []
    for index, entry in enumerate(model.endpoints):
        try:
            for endpoint in entry.endpoints():
                unique = (
                    endpoint.kind,
                    endpoint.identifier,
                    endpoint.interaction,
                    endpoint.transport,
                )
                if unique in found:
                    where = f"{endpoint.key} {endpoint.interaction} ({endpoint.transport})"
                    raise ValueError(f"{where} is listed twice")
                found[unique] = endpoint
        except ValueError as exc:
            problems.append(ConfigProblem(str(path), f"endpoints[{index}]", str(exc)))
    if problems:
        raise ConfigError(problems)
    return list(found.values())
