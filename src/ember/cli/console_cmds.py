"""`ember console`: a one-time sign-in link to the web console for the CLI's account (on the server's
machine, the local admin key). The link works once, for five minutes; only the link goes to stdout."""

from __future__ import annotations

import webbrowser

import typer

from ember.cli.http import api_url, call, err, fail


def console(
    open_browser: bool = typer.Option(False, "--open", help="Also open the link in a web browser."),
) -> None:
    """Print a one-time link that signs a browser in to the web console (valid once, for 5 minutes)."""
    link = call("POST", "/v1/console/links")
    path = link.get("path") if isinstance(link, dict) else None
    if not isinstance(path, str) or not path.startswith("/"):
        fail(f"the server answered without a sign-in link: {link!r}")
        return
    # The address this CLI reached the server at, which the browser beside it can reach too (the
    # server's own idea of its URL may be a bind address such as 0.0.0.0).
    url = api_url() + str(path)
    expires_s = link.get("expiresIn", 300)
    err.print(f"One-time sign-in link to the Ember console (works once, for {expires_s} s):", highlight=False)
    typer.echo(url)
    if open_browser and not webbrowser.open(url):
        err.print("no web browser could be opened here: open the link above yourself", highlight=False)
