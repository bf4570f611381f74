"""Reading engine.yaml and channel files, and reporting each problem with file and key path."""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from router.config import yaml_loader
from router.config._base import M
from router.config.channel import ChannelConfig, FilePoll
from router.config.engine import EngineConfig
from router.config.http import resolve_tls
from router.config.mesh import SmtpTarget
from router.config.mllp_tls import resolve_paths


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in configuration files."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_engine(path: Path | str) -> EngineConfig:
    """Read engine.yaml; relative paths and SQLite files resolve against its folder.

    ``TIE_STORE`` in the environment overrides ``store``, so that database
    credentials never need to live in the file.
    """
    path = Path(path).resolve()
    data = read_yaml(path)
    overridden = bool(os.environ.get("TIE_STORE"))
    if overridden:
        data["store"] = os.environ["TIE_STORE"]
    try:
        config = _validate(EngineConfig, data, path)
    except ConfigError as exc:
        if not overridden:
            raise
        # The file's own store is not what was refused: say where the value came from.
        raise ConfigError(
            ConfigProblem(p.file, "store (from TIE_STORE)", p.message) if p.path == "store" else p
            for p in exc.problems
        ) from exc
    base = path.parent
    if config.blobs.directory is not None:
        config.blobs.directory = (base / config.blobs.directory).resolve()
    for box in config.mesh.mailboxes.values():
        for name in ("cert", "key", "ca"):
            if getattr(box, name) is not None:
                setattr(box, name, (base / getattr(box, name)).resolve())
        for secret in (box.password, box.shared_key):
            if secret.file is not None:
                secret.file = (base / secret.file).resolve()
    return config.model_copy(
        update={
            "base_dir": base,
            "channels": (base / config.channels).resolve(),
            "mappings": (base / config.mappings).resolve(),
            "endpoints": (base / config.endpoints).resolve(),
            "store": resolve_store_url(config.store, base),
        }
    )


def resolve_store_url(url: str, base: Path) -> str:
    """Make a relative SQLite path absolute against ``base``; other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def load_channel(path: Path) -> ChannelConfig:
    """One channel file, with relative file-destination directories resolved."""
    return channel_from_text(read_text(path), path)


def channel_from_text(text: str, path: Path) -> ChannelConfig:
    """A channel from YAML text as if read from ``path`` (e.g. a stored revision)."""
    config = _validate(ChannelConfig, parse_yaml(text, path), path)
    if config.name != path.stem:
        raise ConfigError(
            [ConfigProblem(str(path), "name", f"must match the file name {path.stem!r}")]
        )
    if config.source.file is not None:
        _resolve_file_source(config.source.file, path)
    if config.retention is not None and config.retention.archive is not None:
        config.retention.archive = (path.parent / config.retention.archive).resolve()
    for destination in config.destinations.values():
        if destination.file is not None:
            destination.file.directory = (path.parent / destination.file.directory).resolve()
        if destination.http is not None:
            resolve_tls(destination.http.tls, path.parent)
        if destination.mllp is not None and destination.mllp.tls is not None:
            resolve_paths(destination.mllp.tls, path.parent)
        if destination.smtp is not None:
            _resolve_smtp(destination.smtp, path.parent)
    if config.source.http is not None and config.source.http.bars is not None:
        resolve_tls(config.source.http.bars.tls, path.parent)
    if config.source.proxy is not None:
        resolve_tls(config.source.proxy.tls, path.parent)
    if config.source.mllp is not None and config.source.mllp.tls is not None:
        resolve_paths(config.source.mllp.tls, path.parent)
    return config


def _resolve_smtp(smtp: SmtpTarget, base: Path) -> None:
    """The relay's CA and a password file relative to the channel file, as every other path
    in it is (not to the engine's working directory)."""
    if smtp.ca is not None:
        smtp.ca = (base / smtp.ca).resolve()
    if smtp.password is not None and smtp.password.file is not None:
        smtp.password.file = (base / smtp.password.file).resolve()


def _resolve_file_source(poll: FilePoll, path: Path) -> None:
    """Folders relative to the channel file; neither destination folder may be the polled
    one, or a file put there would be taken again."""
    base = path.parent
    poll.directory = (base / poll.directory).resolve()
    poll.error_to = (base / poll.error_to).resolve() if poll.error_to else poll.directory / "error"
    poll.move_to = (base / poll.move_to).resolve() if poll.move_to else None
    for key in ("move_to", "error_to"):
        if getattr(poll, key) == poll.directory:
            raise ConfigError(
                [ConfigProblem(str(path), f"source.file.{key}", "is the polled folder itself")]
            )


def load_channels(directory: Path) -> dict[str, ChannelConfig]:
    """Every ``*.yaml`` and ``*.yml`` in ``directory`` (one name in both is a problem: one
    file would silently replace the other); all problems are collected before raising."""
    channels: dict[str, ChannelConfig] = {}
    problems: list[ConfigProblem] = []
    if not directory.is_dir():
        raise ConfigError(
            [
                ConfigProblem(
                    str(directory),
                    "",
                    "channels folder not found (engine.yaml's channels: names it, relative to "
                    "engine.yaml's folder)",
                )
            ]
        )
    paths = sorted(directory.glob("*.y*ml"))
    for path in paths:
        twins = [p.name for p in paths if p.stem == path.stem and p != path]
        if twins:
            problems.append(
                ConfigProblem(str(path), "", f"channel {path.stem!r} is also in {twins[0]}")
            )
            continue
        try:
            channels[path.stem] = load_channel(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(cross_check(channels, directory))
    if problems:
        raise ConfigError(problems)
    return channels


def cross_check(channels: dict[str, ChannelConfig], directory: Path) -> list[ConfigProblem]:
    """Problems between channels: shared listener ports, a second proxy, unknown feeds."""
    problems = []
    listeners: dict[tuple[str, int], str] = {}
    proxies = [name for name, channel in channels.items() if channel.source.proxy is not None]
    for name in proxies[1:]:
        problems.append(
            ConfigProblem(
                str(channel_file(directory, name)),
                "source.proxy",
                f"only one channel can be the booking proxy (also {proxies[0]})",
            )
        )
    for name, channel in channels.items():
        file = str(channel_file(directory, name))
        mllp = channel.source.mllp
        if mllp is not None and mllp.port:
            clash = next(
                (
                    other
                    for (host, port), other in listeners.items()
                    if port == mllp.port and same_address(host, mllp.host)
                ),
                None,
            )
            if clash is not None:
                problems.append(
                    ConfigProblem(
                        file,
                        "source.mllp.port",
                        f"{mllp.host}:{mllp.port} is also used by {clash}",
                    )
                )
            listeners[(mllp.host, mllp.port)] = name
        for dest_name, dest in channel.destinations.items():
            if dest.channel is None:
                continue
            target = channels.get(dest.channel.channel)
            where = f"destinations.{dest_name}.channel.channel"
            if target is None:
                problems.append(
                    ConfigProblem(file, where, f"no channel named {dest.channel.channel!r}")
                )
            elif target.source.channel is None:
                problems.append(
                    ConfigProblem(
                        file, where, f"channel {target.name!r} does not have a 'channel' source"
                    )
                )
    return problems


def http_port_clashes(
    config: EngineConfig, channels: dict[str, ChannelConfig]
) -> list[ConfigProblem]:
    """MLLP listeners on engine.yaml's HTTP port: ``serve`` could not bind both."""
    problems = []
    http = config.http
    for name, channel in channels.items():
        mllp = channel.source.mllp
        if (
            mllp is not None
            and http.port
            and mllp.port == http.port
            and same_address(mllp.host, http.host)
        ):
            problems.append(
                ConfigProblem(
                    str(channel_file(config.channels, name)),
                    "source.mllp.port",
                    f"{mllp.host}:{mllp.port} is the engine's HTTP port (http in engine.yaml)",
                )
            )
    return problems


def channel_file(directory: Path, name: str) -> Path:
    """The file that holds channel ``name`` (``.yaml``, or ``.yml`` when only that exists),
    so that a problem names the file the engineer edits."""
    yaml_file, yml_file = directory / f"{name}.yaml", directory / f"{name}.yml"
    return yml_file if yml_file.is_file() and not yaml_file.is_file() else yaml_file


WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def same_address(a: str, b: str) -> bool:
    """Whether two listeners on one port, at hosts ``a`` and ``b``, clash: a wildcard takes
    the port on every address, and the loopback names share one (``serve`` could not bind
    both). Taken widely on purpose: two channels on one port is almost always a mistake."""
    if a in WILDCARD_HOSTS or b in WILDCARD_HOSTS:
        return True
    return a.lower() == b.lower() or (a.lower() in LOOPBACK_HOSTS and b.lower() in LOOPBACK_HOSTS)


def read_yaml(path: Path) -> dict[str, Any]:
    return parse_yaml(read_text(path), path)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", exc.strerror or str(exc))]) from exc


def parse_yaml(text: str, path: Path) -> dict[str, Any]:
    """A YAML mapping; ``path`` only names the source in problems."""
    try:
        data = yaml_loader.load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "'\\t'" in problem:
            # PyYAML says "found character '\t' that cannot start any token".
            problem = "a tab character: YAML is indented with spaces only, replace the tab"
        raise ConfigError([ConfigProblem(str(path), where, f"invalid YAML: {problem}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(str(path), "", "expected a mapping of keys at the top")])
    return data


def _validate(model: type[M], data: dict[str, Any], path: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            ConfigProblem(
                str(path), key_path(err["loc"], err.get("input")), error_message(err, model)
            )
            for err in exc.errors()
        ) from exc


def key_path(loc: tuple[Any, ...], value: Any = None) -> str:
    """``a.b[0].c`` from a pydantic location; ``value`` is the input, which names a key that
    is itself wrong (pydantic's ``[key]``: ``on:`` read as true would show as ``[1]``)."""
    parts: list[str] = []
    for n, item in enumerate(loc):
        if loc[n + 1 : n + 2] == ("[key]",):
            item = str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item != "[key]" and not str(item).startswith("function-"):
            parts.append(("." if parts else "") + str(item).rstrip("_"))
    return "".join(parts)


def error_message(err: Any, model: type[BaseModel] | None = None) -> str:
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        return unknown_key(model, tuple(err["loc"]))
    if err["type"] == "missing":
        return "missing: this key is required"
    if err["type"] in EXPECTED:
        return f"expected {EXPECTED[err['type']]}, not {yaml_value(err.get('input'))}"
    return message


_MAPPING = "a mapping (key: value lines, or {key: value})"
_LIST = "a list ('- ' lines, or [a, b])"
# pydantic's wrong-type errors in YAML's words ("a valid dictionary or instance of
# SourceConfig" means nothing to someone editing a channel file).
EXPECTED = {
    "model_type": _MAPPING,
    "model_attributes_type": _MAPPING,
    "dict_type": _MAPPING,
    "list_type": _LIST,
    "tuple_type": _LIST,
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
}


def yaml_value(value: Any) -> str:
    """What YAML made of the value, in the words of the file (and how to keep it text)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"{str(value).lower()} (an unquoted yes, no, on, off, true or false: quote text)"
    if isinstance(value, int | float):
        return f"the number {value} (quote it to keep it text)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "...")


def unknown_key(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    """``unknown key``, with the nearest accepted key and the keys accepted there: a typo
    (``max_attempt``) is fixed from the message, without the documentation at hand."""
    keys = accepted_keys(model, loc[:-1]) if model is not None else []
    if not keys:
        return "unknown key"
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    hint = f": did you mean {close[0]}?" if close else ""
    return f"unknown key{hint} (keys here: {', '.join(keys)})"


def accepted_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the models accept at ``loc`` (a pydantic error location), [] if unknown."""
    found: list[Any] = [model]
    for item in loc:
        if not (isinstance(item, str) and item.startswith("function-")):
            found = [inner for tp in _members(found) for inner in _step(tp, item)]
    models = {tp for tp in _members(found) if isinstance(tp, type) and issubclass(tp, BaseModel)}
    if len(models) != 1:
        return []
    [only] = models
    return [field.alias or name for name, field in only.model_fields.items() if not field.exclude]


def _members(candidates: list[Any]) -> list[Any]:
    """Each type of a union (or an Annotated type) on its own."""
    found = []
    for tp in candidates:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            found.extend(_members([typing.get_args(tp)[0]]))
        elif origin in (typing.Union, types.UnionType):
            found.extend(_members(list(typing.get_args(tp))))
        else:
            found.append(tp)
    return found


def _step(tp: Any, item: Any) -> list[Any]:
    """The type one step of a location leads to from ``tp``: a list item, a dict value or
    a model's key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(item, int) and origin in (list, tuple) and args:
        return [args[0]]
    if isinstance(item, str) and origin is dict and len(args) == 2:
        return [args[1]]
    if isinstance(item, str) and isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.annotation for n, f in tp.model_fields.items() if item in (n, f.alias)]
    return []
