"""The ``Allow`` header of a 405: every method the path is served with.

Starlette answers 405 from the first route whose path matches, so a path served by two
routes (``GET`` and ``POST /api/endpoints``) said ``Allow: GET`` and hid the other;
HEAD, answered wherever GET is (router/api/head.py), was missing too.
"""

from __future__ import annotations

from fastapi import FastAPI

from router.api.security import route_table


def allowed_methods(app: FastAPI, path: str) -> str:
    """The methods of every route whose path matches ``path``, as an ``Allow`` value."""
    methods: set[str] = set()
    for route in route_table(app):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))
