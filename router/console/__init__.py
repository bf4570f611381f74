"""The operations console: server-rendered pages (Jinja2, htmx) for support staff and approvers."""
