"""The few server-made HTML pages (refusals and the login form) and the headers every answer
carries. Whatever is put into a page is escaped here; the dashboard itself is static."""

from __future__ import annotations

import html

# no inline script or style anywhere: a name that slipped through as markup could not run
SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        '<link rel=stylesheet href="/dashboard.css"></head>'
        f"<body class=refusal><main class=card>{body}</main></body></html>\n"
    ).encode()


def login_page(status: int, why: str, *, form: bool) -> bytes:
    """401/403: why, and (over HTTPS) a form that trades a service token for a cookie."""
    title = "NovaCron Edge: sign in" if status == 401 else "NovaCron Edge: not allowed"
    parts = [
        f"<h1>{'Sign in' if status == 401 else 'Not allowed'} ({status})</h1>",
        f"<p class=why id=why>{html.escape(why)}</p>",
    ]
    if form and status == 401:
        parts.append(
            '<form method=post action="/login">'
            "<label for=token>Service token</label> "
            "<input id=token name=token type=password autocomplete=off required "
            'placeholder="ncs.xxxxxxxx.…" size=48> '
            "<button type=submit>Open the dashboard</button></form>"
            "<p class=hint>Or present a client certificate of this installation "
            "(any role), or open <code>/?token=…</code> once.</p>"
        )
    return _page(title, "".join(parts))


def simple_page(status: int, text: str) -> bytes:
    return _page(f"NovaCron Edge: {status}", f"<h1>{status}</h1><p>{html.escape(text)}</p>")
