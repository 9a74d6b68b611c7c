"""``CuratorHook``: an Airflow connection of type ``curator`` turned into what the steps take.

A connection holds the API key (password), the base URL (host) and, in its extras, the
``provider``, default ``backend_params`` and fsspec ``storage_options`` (see
:mod:`.connection_fields`). The hook turns it into one
:class:`~curator_flows.credentials.Credentials` value per step call.

Invariants:
- the key only ever lives in the connection and in the ``Credentials`` passed to a step (a
  ``SecretStr``, masked in every ``repr``); nothing here logs, returns in a result, or stores it;
- :meth:`CuratorHook.test_connection` makes one cheap authenticated call (list the models),
  never a paid one;
- a missing connection is always an error naming it; the embedded simulator
  (:mod:`.embedded`) is used only when a connection asks for it (host ``embedded-simulator``),
  never in place of a connection that does not exist.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from curator_flows.credentials import PROVIDER_ENV, Credentials
from curator_flows.errors import ConfigError

from ..compat import AirflowNotFoundException
from .connection_fields import CONN_TYPE, HOOK_NAME, PROVIDERS, ui_field_behaviour
from .embedded import EMBEDDED_HOST, SIMULATED_DIR, is_embedded_connection

TEST_TIMEOUT = 15.0
ANTHROPIC_VERSION = "2023-06-01"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: connection ids this process already reported as the embedded simulator
_SIMULATED: set[str] = set()


class CuratorHook(BaseHook):
    """The ``curator`` connection: API key, base URL, provider, backend params, storage options.

    :param conn_id: the Airflow connection id (``curator_default``).
    """

    conn_name_attr = "conn_id"
    default_conn_name = "curator_default"
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(self, conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id

    # ------------------------------------------------------------------ the connection form
    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return ui_field_behaviour()

    # ------------------------------------------------------------------ reading it
    @cached_property
    def connection(self) -> Any:
        """The Airflow connection (``AirflowNotFoundException`` naming it when it is missing)."""
        try:
            conn = self.get_connection(self.conn_id)
        except AirflowNotFoundException as exc:
            raise AirflowNotFoundException(missing_connection(self.conn_id, exc)) from exc
        self._report_embedded(conn)
        return conn

    async def aconnection(self) -> Any:
        """:attr:`connection`, fetched without blocking the event loop (for triggers)."""
        if "connection" in self.__dict__:
            return self.__dict__["connection"]
        try:
            conn = await self.aget_connection(self.conn_id)
        except AirflowNotFoundException as exc:
            raise AirflowNotFoundException(missing_connection(self.conn_id, exc)) from exc
        self._report_embedded(conn)
        self.__dict__["connection"] = conn
        return conn

    def _report_embedded(self, conn: Any) -> None:
        if is_embedded_connection(conn) and self.conn_id not in _SIMULATED:  # once per process
            _SIMULATED.add(self.conn_id)
            self.log.warning(
                "connection %r is the embedded simulator (host %r): rows and costs are "
                "simulated; runs and outputs go to %s/ locations",
                self.conn_id,
                EMBEDDED_HOST,
                SIMULATED_DIR,
            )

    def get_conn(self) -> Credentials:
        """The connection as :class:`~curator_flows.credentials.Credentials`."""
        return self.credentials()

    def credentials(self) -> Credentials:
        """API key, base URL and storage options for one step call (never stored)."""
        return credentials_of(self.connection)

    async def acredentials(self) -> Credentials:
        """:meth:`credentials` for async code: the lookup and a simulator start never block."""
        import asyncio

        conn = await self.aconnection()
        if is_embedded_connection(conn):
            return await asyncio.to_thread(credentials_of, conn)
        return credentials_of(conn)

    @property
    def simulated(self) -> bool:
        """Whether the connection is the embedded simulator (its results and costs are
        simulated)."""
        return is_embedded_connection(self.connection)

    def provider(self) -> str | None:
        """The connection's ``provider`` extra (``None`` when unset)."""
        return provider_of(self.connection)

    def backend_params(self) -> dict[str, Any]:
        """The connection's non-secret ``backend_params`` extra (an API key there is dropped)."""
        params = _json_extra(self.connection, "backend_params")
        params.pop("api_key", None)
        return params

    # ------------------------------------------------------------------ testing it
    def test_connection(self) -> tuple[bool, str]:
        """List the provider's models with the key: one cheap authenticated call."""
        try:
            credentials = self.credentials()
            provider = self.provider() or "openai"
            url, headers = _models_request(provider, credentials)
        except Exception as exc:  # noqa: BLE001 - reported to the UI
            return False, f"{type(exc).__name__}: {exc}"
        secret = credentials.secret()
        request = urllib.request.Request(url, headers=headers, method="GET")
        opener = _opener(url)
        try:
            with opener.open(request, timeout=TEST_TIMEOUT) as response:
                body = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = _redact(exc.read()[:300].decode("utf-8", "replace"), secret)
            return False, f"{provider} answered {exc.code} at {url}: {detail}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return False, f"cannot reach {url}: {_redact(str(exc), secret)}"
        models = body.get("data") if isinstance(body, dict) else None
        count = len(models) if isinstance(models, list) else 0
        return True, f"Connected to {provider} at {url}: {count} models available"


# ---------------------------------------------------------------------- helpers
def missing_connection(conn_id: str, exc: BaseException) -> str:
    """What to say about a connection that does not exist: its id, the ``curator``-looking
    connections this process's environment defines (``AIRFLOW_CONN_*``; those of the metadata
    database and secrets backends cannot be listed from a task), and what to do."""
    defined = sorted(
        name[len("AIRFLOW_CONN_") :].lower()
        for name in os.environ
        if name.startswith("AIRFLOW_CONN_")
    )
    known = f"; connections defined in this environment: {', '.join(defined)}" if defined else ""
    return (
        f"connection {conn_id!r} does not exist ({exc}){known}: create a 'curator' connection "
        f"with that id (Admin -> Connections, `airflow connections add {conn_id} --conn-type "
        "curator ...`) or fix conn_id=; for the embedded simulator, define it with host "
        f"{EMBEDDED_HOST!r}"
    )


def credentials_of(conn: Any) -> Credentials:
    """The :class:`Credentials` of a connection (host ``embedded-simulator``: this process's
    embedded simulator)."""
    if is_embedded_connection(conn):
        from .embedded import API_KEY, embedded_simulator

        return Credentials(api_key=API_KEY, base_url=embedded_simulator().base_url)
    return Credentials(
        api_key=conn.password or None,
        base_url=base_url_of(conn),
        storage_options=_json_extra(conn, "storage_options"),
    )


def base_url_of(conn: Any) -> str | None:
    """The base URL in the connection's host (a full URL; a bare host gets ``https://``)."""
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" in host:
        return host.rstrip("/")
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema.strip('/')}" if conn.schema else ""
    return f"https://{host}{port}{path}"


def provider_of(conn: Any) -> str | None:
    extra = conn.extra_dejson
    value = extra.get("provider") or extra.get(f"extra__{CONN_TYPE}__provider")
    if value in (None, ""):
        return None
    if value not in PROVIDERS:
        raise ConfigError(
            f"connection {conn.conn_id!r}: provider {value!r} is not one of {list(PROVIDERS)}"
        )
    return value


def _json_extra(conn: Any, name: str) -> dict[str, Any]:
    extra = conn.extra_dejson
    value = extra.get(name, extra.get(f"extra__{CONN_TYPE}__{name}"))
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(
                f"connection {conn.conn_id!r}: the {name} extra is not valid JSON"
            ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"connection {conn.conn_id!r}: the {name} extra must be a JSON object")
    return dict(value)


def _models_request(provider: str, credentials: Credentials) -> tuple[str, dict[str, str]]:
    """URL and headers of the provider's list-models call."""
    if provider == "anthropic":
        base = (credentials.base_url or PROVIDER_ENV["anthropic"][2]).rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if credentials.secret():
            headers["x-api-key"] = credentials.secret() or ""
        return f"{base}/models", headers
    if provider == "litellm" and not credentials.base_url:
        raise ConfigError(
            "a litellm connection can only be tested with a base URL (an OpenAI-compatible "
            "proxy); each underlying provider is tested with its own connection"
        )
    base = (credentials.base_url or PROVIDER_ENV["openai"][2]).rstrip("/")
    headers = {}
    if credentials.secret():
        headers["Authorization"] = f"Bearer {credentials.secret()}"
    return f"{base}/models", headers


def _opener(url: str) -> urllib.request.OpenerDirector:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host in _LOOPBACK:  # never through an environment proxy
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
