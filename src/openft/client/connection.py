"""Where the server is, which key to send, and how the client commands report results and errors.

The client talks HTTP only (the official `openai` SDK for the standard endpoints, httpx for openft's own),
so it works against any openft server, local or remote. For a local server nothing needs configuring: the
URL defaults to `openft serve`'s host and port and the key to the one the server keeps in its data folder.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="OPENFT_BASE_URL",
        help="The server (env OPENFT_BASE_URL; http://OPENFT_HOST:OPENFT_PORT, i.e. http://127.0.0.1:8000).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENFT_API_KEY",
        help="The key (env OPENFT_API_KEY; else a local server's DATA_DIR/api_key, "
        "DATA_DIR = OPENFT_DATA_DIR or ./openft-data).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of text and tables.")]


@dataclass(frozen=True)
class Connection:
    base_url: str
    """The OpenAI-style base URL, ending in `/v1` (or `/openai/v1`)."""
    api_key: str

    @property
    def root(self) -> str:
        """The server's root URL, for openft's own endpoints."""
        for suffix in ("/openai/v1", "/v1"):
            if self.base_url.endswith(suffix):
                return self.base_url[: -len(suffix)]
        return self.base_url

    def openai(self) -> Any:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=2)

    def http(self) -> Any:
        import httpx

        # a trailing slash, so relative paths ("files/…") land under /v1/
        return httpx.Client(
            base_url=self.base_url + "/", headers={"Authorization": f"Bearer {self.api_key}"}, timeout=600
        )


def connect(base_url: str | None, api_key: str | None) -> Connection:
    """Resolve the server and key the way the commands document it (flags, then environment, then defaults)."""
    from openft.settings import Settings

    settings = Settings()
    url = (base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    if not url.endswith(("/v1", "/openai/v1")):
        url += "/v1"
    key = api_key or settings.api_key
    local = is_loopback_url(url)
    if not key and local and settings.key_file.is_file():
        key = settings.key_file.read_text(encoding="utf-8").strip()
    if not key and not local:
        fail(
            f"no API key for {url}: pass --api-key or set OPENFT_API_KEY (the local server's key in "
            f"{settings.key_file} is only sent to a loopback address such as 127.0.0.1 or localhost)",
            code="missing_api_key",
        )
    if not key:
        fail(
            f"no API key: pass --api-key, set OPENFT_API_KEY, or run where the server's data folder is "
            f"({settings.key_file} does not exist; OPENFT_DATA_DIR sets the folder)",
            code="missing_api_key",
        )
    return Connection(url, key)


def is_loopback_url(url: str) -> bool:
    """Whether `url` names this machine by a loopback address (127.0.0.0/8, ::1) or `localhost`.

    The data folder's key is the local server's admin key: sending it to whatever `--base-url` names
    would hand it to another host (a typo, a proxy, or a hostile server). So it is read only for a
    loopback URL; any other server needs its key given explicitly. A name that merely resolves to a
    loopback address (other than `localhost`) does not count: resolution is not ours to trust.
    """
    import ipaddress
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fail(message: str, *, param: str | None = None, code: str | None = None, as_json: bool = False) -> NoReturn:
    """One line on stderr (`error: message (param: x, code: y)`), the error envelope on stdout with --json; exit 1."""
    if as_json:
        typer.echo(json.dumps({"error": {"message": message, "param": param, "code": code}}))
    details = ", ".join(f"{name}: {value}" for name, value in (("param", param), ("code", code)) if value)
    typer.echo(f"error: {message}" + (f" ({details})" if details else ""), err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def api_errors(connection: Connection | None = None, *, as_json: bool = False) -> Iterator[None]:
    """Turn the SDK's and httpx's exceptions into `fail`: a server error is one line, never a traceback."""
    import httpx
    import openai

    try:
        yield
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        message = error.get("message") if isinstance(error, dict) else None
        fail(str(message or exc.message), param=getattr(exc, "param", None), code=exc.code, as_json=as_json)
    except (openai.APIConnectionError, httpx.TransportError) as exc:
        where = connection.root if connection else "the server"
        fail(f"cannot reach {where} ({exc}); is `openft serve` running?", code="connection_error", as_json=as_json)
    except openai.APIError as exc:  # e.g. an error chunk in a stream
        fail(str(exc.message), param=exc.param, code=exc.code, as_json=as_json)
    except ServerError as exc:
        fail(exc.message, param=exc.param, code=exc.code, as_json=as_json)


class ServerError(Exception):
    """An error answer from openft's own endpoints (read with httpx), in the OpenAI envelope."""

    def __init__(self, response: Any):
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        self.message = str(error.get("message") or f"HTTP {response.status_code}")
        self.param, self.code = error.get("param"), error.get("code")
        super().__init__(self.message)


def to_json(obj: Any) -> Any:
    """An SDK object (with the server's extension fields) or a plain value, as JSON-ready data."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict(mode="json")
    if isinstance(obj, list):
        return [to_json(item) for item in obj]
    return obj


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(to_json(obj), ensure_ascii=False))


def console() -> Any:
    """A rich console; piped output gets a wide one, so ids are not cut to fit 80 columns."""
    from rich.console import Console

    found = Console()
    return found if found.is_terminal else Console(width=200)


def when(stamp: int | None) -> str:
    import datetime

    if stamp is None:
        return ""
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def size(n: int | None) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def existing_file(path: Path) -> Path:
    if not path.is_file():
        fail(f"no such file: {path}", code="file_not_found")
    return path
