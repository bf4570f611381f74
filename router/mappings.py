"""Loading mapping functions (``module:function``) from the channel's mappings folder.

The folder is mounted as the package ``tie_mappings`` so that mappings can
import each other (``from tie_mappings import helpers``) without clashing with
installed modules of the same name.
"""

from __future__ import annotations

import difflib
import importlib
import sys
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE = "tie_mappings"
Mapping = Callable[..., Any]


class MappingError(Exception):
    """A mapping reference that cannot be loaded; ``key`` is where the channel names it."""

    def __init__(self, message: str, key: str = "transform") -> None:
        super().__init__(message)
        self.key = key


def mount(directory: Path) -> None:
    """Make ``directory`` the ``tie_mappings`` package (again, if it moved)."""
    package = sys.modules.get(PACKAGE)
    path = str(directory.resolve())
    if package is not None and list(getattr(package, "__path__", [])) == [path]:
        return
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    package = types.ModuleType(PACKAGE)
    package.__path__ = [path]
    sys.modules[PACKAGE] = package


def forget() -> None:
    """Drop the imported mapping modules, so that the next ``load`` reads the files as they
    are now. Channels compiled before keep the functions they hold: each runs the code it
    was compiled with until it is compiled again."""
    for name in [n for n in sys.modules if n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def load(reference: str, key: str = "transform") -> Mapping:
    """The function named by ``module:function``; the folder must be mounted first."""
    module_name, _, function_name = reference.partition(":")
    try:
        module = importlib.import_module(f"{PACKAGE}.{module_name}")
    except ImportError as exc:
        wanted = f"{PACKAGE}.{module_name}"
        if exc.name is not None and (wanted + ".").startswith(exc.name + "."):
            raise MappingError(f"{reference}: {_no_module(module_name)}", key) from exc
        # An import inside the module failed (a package not installed): say where.
        raise MappingError(
            f"{reference}: mapping module failed to load: {_describe(exc)}", key
        ) from exc
    except Exception as exc:  # a SyntaxError or a failing top-level statement in the module
        raise MappingError(
            f"{reference}: mapping module failed to load: {_describe(exc)}", key
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise MappingError(f"{reference}: {_no_function(module, function_name)}", key)
    return function


def _no_function(module: types.ModuleType, name: str) -> str:
    """Which file was looked in, and the nearest function it has (a typo is the usual cause)."""
    defined = [
        n
        for n, value in vars(module).items()
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__
    ]
    short = module.__name__.removeprefix(PACKAGE + ".")
    close = difflib.get_close_matches(name, defined, n=1)
    hint = f": did you mean {close[0]}?" if close else ""
    return f"no function {name!r} in {short} ({module.__file__}){hint}"


def _no_module(module_name: str) -> str:
    """The file a ``module:function`` reference needs, in the mounted mappings folder."""
    package = sys.modules.get(PACKAGE)
    folders = list(getattr(package, "__path__", []))
    relative = module_name.replace(".", "/") + ".py"
    where = str(Path(folders[0]) / relative) if folders else relative
    return f"no mapping module {module_name!r}: {where} does not exist"


def _describe(exc: Exception) -> str:
    """The error with the file and line it happened at, so a broken mapping is found at once."""
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} ({exc.filename}, line {exc.lineno})"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"
