"""The gateway: one Ollama- and OpenAI-compatible endpoint in front of an `AsyncPool`.

A plain ASGI app: a dict lookup finds the route, the body is read once (with a size limit)
and parsed once, and the pool's results or chunks are written as Ollama NDJSON or OpenAI
SSE. Errors are answered in the protocol of the route with a fitting status; an error after
a stream began ends it with an in-band error line or event, never a silent truncation.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

from sollol.activity import ModelInfo
from sollol.codec import model_key
from sollol.detection import NodeState
from sollol.errors import SollolError
from sollol.gateway import translate as tr
from sollol.gateway.failures import api_error, openai_body
from sollol.gateway.http1 import RawJson
from sollol.gateway.wire import (
    JSON_TYPE,
    NDJSON_TYPE,
    SSE_TYPE,
    TEXT_TYPE,
    ApiError,
    Receive,
    Scope,
    Send,
    direct_sender,
    dumps,
    end_stream,
    header_values,
    parse_object,
    piece_sender,
    read_body,
    require_model,
    rfc3339_now,
    send_body,
    send_json,
    start_stream,
)
from sollol.http import HttpRequest
from sollol.inference import ChatRequest, Chunk, EmbedRequest, GenerateRequest
from sollol.pool import AsyncPool

log = logging.getLogger(__name__)

#: The Ollama version the gateway reports on /api/version (clients gate features on it).
OLLAMA_VERSION = "0.12.6"
ROOT_TEXT = b"Ollama is running"

Handler = Callable[[Scope, Receive, Send, Any], Awaitable[None]]

_PARAM_BLOCK = frozenset({"self"})  # keyword names the pool's methods cannot take as params


class Route:
    """One path: its protocol ("ollama" or "openai") and a handler per method."""

    __slots__ = ("methods", "openai", "reads_body")

    def __init__(self, openai: bool, methods: Mapping[str, Handler], reads_body: bool) -> None:
        self.openai = openai
        self.methods = dict(methods)
        self.reads_body = reads_body


class Gateway:
    """The ASGI app. `pool` serves the requests; `api_keys`, when given, are required."""

    def __init__(
        self,
        pool: AsyncPool,
        *,
        api_keys: Iterable[str] = (),
        max_body: int = 32 * 1024 * 1024,
        close_pool: bool = True,
        observe: bool = True,
    ) -> None:
        self.pool = pool
        self._keys = tuple(k.encode() for k in api_keys if k)
        self.max_body = max_body
        self._close_pool = close_pool
        self._started_at = time.time()
        self._modified_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started_at))
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._show_transport: Any = None
        self._routes: dict[str, Route] = {}
        get = {"GET": self._root, "HEAD": self._root}
        self._add("/", False, get, reads_body=False)
        self._add("/api/version", False, {"GET": self._version, "HEAD": self._version}, reads_body=False)
        self._add("/api/tags", False, {"GET": self._tags, "HEAD": self._tags}, reads_body=False)
        self._add("/api/ps", False, {"GET": self._ps}, reads_body=False)
        self._add("/api/show", False, {"POST": self._show})
        self._add("/api/chat", False, {"POST": self._chat})
        self._add("/api/generate", False, {"POST": self._generate})
        self._add("/api/embed", False, {"POST": self._embed})
        self._add("/api/embeddings", False, {"POST": self._embeddings})
        self._add("/v1/models", True, {"GET": self._v1_models}, reads_body=False)
        self._add("/v1/chat/completions", True, {"POST": self._v1_chat})
        self._add("/v1/completions", True, {"POST": self._v1_completions})
        self._add("/v1/embeddings", True, {"POST": self._v1_embeddings})
        self._model_route = Route(True, {"GET": self._v1_model}, False)
        self.observe: Any = None
        if observe:  # /metrics, /dashboard, /api/sollol/nodes, /api/sollol/events (sollol.observe)
            from sollol.observe import mount

            self.observe = mount(self)

    def _add(self, path: str, openai: bool, methods: Mapping[str, Handler], *, reads_body: bool = True) -> None:
        self._routes[path] = Route(openai, methods, reads_body)

    @property
    def paths(self) -> list[str]:
        """Every route the gateway answers."""
        return [*self._routes, "/v1/models/{model}"]

    # -- ASGI --------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.pool.start()
                except SollolError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def aclose(self) -> None:
        """Close what the gateway opened (and the pool, unless told not to)."""
        if self.observe is not None:
            self.observe.close()
        if self._show_transport is not None:
            await self._show_transport.aclose()
            self._show_transport = None
        if self._close_pool:
            await self.pool.aclose()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route = self._routes.get(path)
        if route is None:
            if path.startswith("/v1/models/") and len(path) > 11:
                route = self._model_route
            else:
                await send_body(send, 404, b"404 page not found", TEXT_TYPE)
                return
        handler = route.methods.get(scope["method"])
        if handler is None:
            await send_body(
                send, 405, b"405 method not allowed", TEXT_TYPE, [(b"allow", ", ".join(route.methods).encode())]
            )
            return
        try:
            length, auth, key = header_values(scope)
            if self._keys and path != "/":
                self._authorize(auth, key)
            body = parse_object(await read_body(receive, length, self.max_body)) if route.reads_body else None
            await handler(scope, receive, send, body)
        except Exception as exc:  # every failure is answered in the route's protocol
            error = api_error(exc, openai=route.openai)
            if error.status >= 500 and not isinstance(exc, (ApiError, SollolError)):
                log.exception("gateway error on %s %s", scope["method"], path)
            elif error.status >= 500:
                log.warning("%s %s: %s", scope["method"], path, error.message)
            payload = openai_body(error) if route.openai else {"error": error.message}
            headers = list(error.headers)
            if error.status == 401:
                headers.append((b"www-authenticate", b"Bearer"))
                headers.append((b"www-authenticate", b'Basic realm="SOLLOL", charset="UTF-8"'))
            await send_json(send, payload, error.status, headers)

    def _authorize(self, auth: bytes | None, key: bytes | None) -> None:
        given = None
        if auth is not None:
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() == b"bearer":
                given = token.strip()
            elif scheme.lower() == b"basic":  # browsers (the dashboard): any user name, the key as password
                given = _basic_password(token.strip())
        if given is None and key is not None:
            given = key.strip()
        if given is None:
            raise ApiError(
                401,
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'",
                code="invalid_api_key",
            )
        ok = False
        for expected in self._keys:
            ok |= hmac.compare_digest(given, expected)
        if not ok:
            raise ApiError(401, "the API key is not valid", code="invalid_api_key")

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):x}"

    # -- cluster knowledge --------------------------------------------------------------------------

    def _live_nodes(self) -> list[Any]:
        # Read-only use of the pool's node table: models and activity per node.
        return [p for p in self.pool._nodes if p.state in (NodeState.UP, NodeState.LOADING, NodeState.UNKNOWN)]

    def _model_infos(self) -> dict[str, ModelInfo]:
        infos: dict[str, ModelInfo] = {}
        for pnode in self._live_nodes():
            for key, info in (pnode.models or {}).items():
                infos.setdefault(key, info)
        return infos

    def _has_model(self, model: str) -> bool:
        key = model_key(model)
        return any(key in (p.models or {}) for p in self._live_nodes())

    def _details(self, info: ModelInfo) -> dict[str, Any]:
        details = dict(info.details)
        family = info.family or details.get("family") or ""
        out = {
            "parent_model": details.get("parent_model", ""),
            "format": details.get("format", "gguf"),
            "family": family,
            "families": details.get("families") or ([family] if family else None),
            "parameter_size": details.get("parameter_size", ""),
            "quantization_level": details.get("quantization_level", ""),
        }
        return out

    def _tag(self, info: ModelInfo) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": info.name,
            "model": info.name,
            "modified_at": self._modified_at,
            "size": info.size or 0,
            "digest": hashlib.sha256(info.name.encode()).hexdigest(),
            "details": self._details(info),
        }
        if info.capabilities is not None:
            entry["capabilities"] = sorted(info.capabilities)
        return entry

    # -- Ollama: plain routes -----------------------------------------------------------------------

    async def _root(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        await send_body(send, 200, ROOT_TEXT, TEXT_TYPE)

    async def _version(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        await send_json(send, {"version": OLLAMA_VERSION})

    async def _tags(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        await self.pool.start()
        infos = self._model_infos()
        await send_json(send, {"models": [self._tag(infos[k]) for k in sorted(infos)]})

    async def _ps(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        await self.pool.start()
        out = []
        for pnode in self._live_nodes():
            infos = pnode.models or {}
            activity = pnode.activity
            if activity is not None and activity.loaded is not None:
                loaded = [(m.name, m.size, m.size_vram, m.expires_at, m.context_length) for m in activity.loaded]
            else:
                # Single-model servers (vLLM, TGI, llama.cpp) hold their models for as long as they run.
                loaded = [(i.name, i.size, None, None, i.context_length) for i in infos.values()]
            for name, size, vram, expires, context in loaded:
                info = infos.get(model_key(name)) or ModelInfo(name=name)
                out.append(
                    {
                        "name": name,
                        "model": name,
                        "size": size or info.size or 0,
                        "digest": hashlib.sha256(name.encode()).hexdigest(),
                        "details": self._details(info),
                        "expires_at": expires or "2318-01-01T00:00:00Z",
                        "size_vram": vram or 0,
                        "context_length": context or info.context_length or 0,
                        "node": pnode.id,
                        "backend": pnode.backend.name if pnode.backend else None,
                    }
                )
        await send_json(send, {"models": out})

    async def _show(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model is required")
        await self.pool.start()
        key = model_key(name)
        holders = [p for p in self._live_nodes() if key in (p.models or {})]
        if not holders:
            raise ApiError(404, f"model '{name}' not found")
        for pnode in holders:
            if pnode.backend is not None and pnode.backend.name == "ollama" and pnode.state is NodeState.UP:
                answer = await self._forward(pnode.node, HttpRequest.post("/api/show", json=body))
                if answer is not None and answer.ok:
                    await send_body(
                        send,
                        200,
                        answer.body,
                        answer.header("content-type").encode()
                        if answer.header("content-type")
                        else b"application/json; charset=utf-8",
                    )
                    return
        info = (holders[0].models or {})[key]
        family = info.family or str(info.details.get("family", "")) or "unknown"
        model_info: dict[str, Any] = {"general.architecture": family}
        if info.context_length:
            model_info[f"{family}.context_length"] = info.context_length
        kind = holders[0].backend.name if holders[0].backend else "a node"
        caps = sorted(info.capabilities) if info.capabilities is not None else ["completion"]
        await send_json(
            send,
            {
                "license": "",
                "modelfile": f"# served through SOLLOL by {kind}\nFROM {info.name}\n",
                "parameters": "",
                "template": "",
                "details": self._details(info),
                "model_info": model_info,
                "capabilities": caps,
                "modified_at": self._modified_at,
            },
        )

    async def _forward(self, node: Any, request: HttpRequest) -> Any:
        if self._show_transport is None:
            from sollol.transport import Transport

            self._show_transport = Transport(max_connections=8, max_keepalive=2)
        try:
            return await self._show_transport.send(node, request)
        except SollolError as exc:
            log.info("could not forward %s to %s: %s", request.path, node.id, exc)
            return None

    # -- Ollama: generation ----------------------------------------------------------------------------

    @staticmethod
    def _ollama_fields(body: dict[str, Any], *consumed: str) -> tuple[dict[str, Any], dict[str, Any]]:
        options = body.get("options")
        if options is None:
            options = {}
        elif not isinstance(options, dict):
            raise ApiError(400, "options must be a JSON object")
        params = {k: v for k, v in body.items() if k not in consumed and k not in _PARAM_BLOCK}
        return options, params

    async def _chat(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        messages = body.get("messages")
        if messages is None:
            messages = []
        if not isinstance(messages, list):
            raise ApiError(400, "messages must be an array")
        options, params = self._ollama_fields(body, "model", "messages", "stream", "options")
        if not messages:  # Ollama: an empty chat loads the model and answers at once
            await self._loaded(send, model, "message", params)
            return
        request = ChatRequest(model=model, messages=tuple(messages), options=options, params=params, protocol="ollama")
        if body.get("stream") is False:
            result = await self.pool.serve(request)
            raw = result.raw
            if type(raw) is RawJson and tr.is_ollama_payload(raw, "message"):
                await send_body(send, 200, raw.body, JSON_TYPE)  # the Ollama node's own bytes
            else:
                await send_json(send, tr.ollama_chat(model, result))
            return
        lines = getattr(self.pool, "stream_lines", None)
        if lines is not None:  # an Ollama node's lines go out as they came, unparsed
            chunks = await lines(request, passthrough="ollama", sink=direct_sender(send))
        else:
            chunks = await self.pool.stream(request)
        await self._ndjson(receive, send, chunks, model, chat=True)

    async def _generate(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        prompt = body.get("prompt")
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        options, params = self._ollama_fields(body, "model", "prompt", "stream", "options")
        if not prompt and not body.get("images"):
            await self._loaded(send, model, "response", params)
            return
        request = GenerateRequest(model=model, prompt=prompt, options=options, params=params, protocol="ollama")
        if body.get("stream") is False:
            result = await self.pool.serve(request)
            raw = result.raw
            if type(raw) is RawJson and tr.is_ollama_payload(raw, "response"):
                await send_body(send, 200, raw.body, JSON_TYPE)  # the Ollama node's own bytes
            else:
                await send_json(send, tr.ollama_generate(model, result))
            return
        lines = getattr(self.pool, "stream_lines", None)
        if lines is not None:
            chunks = await lines(request, passthrough="ollama", sink=direct_sender(send))
        else:
            chunks = await self.pool.stream(request)
        await self._ndjson(receive, send, chunks, model, chat=False)

    async def _loaded(self, send: Send, model: str, field: str, params: Mapping[str, Any]) -> None:
        await self.pool.start()
        if not self._has_model(model):
            raise ApiError(
                404, f"model '{model}' not found; the cluster offers: {', '.join(self.pool.models()) or 'no models'}"
            )
        payload: dict[str, Any] = {"model": model, "created_at": rfc3339_now()}
        payload[field] = {"role": "assistant", "content": ""} if field == "message" else ""
        payload["done_reason"] = "unload" if params.get("keep_alive") in (0, "0", "0s") else "load"
        payload["done"] = True
        await send_json(send, payload)

    async def _ndjson(
        self, receive: Receive, send: Send, chunks: AsyncIterator[Chunk | bytes], model: str, *, chat: bool
    ) -> None:
        first = await _first(chunks)  # errors before the first byte get their real status
        await start_stream(send, NDJSON_TYPE)
        gone = _watch_disconnect(receive)
        piece = piece_sender(send)
        try:
            chunk: Chunk | bytes | None = first
            while chunk is not None:
                if type(chunk) is bytes:  # whole lines from an Ollama node (`AsyncPool.stream_lines`)
                    await piece(chunk)
                else:
                    for line in tr.ollama_chunk(model, chunk, chat):  # type: ignore[arg-type]
                        await piece(dumps(line) + b"\n")
                if _gone(gone):
                    break
                chunk = await anext(chunks, None)
        except Exception as exc:
            await piece(dumps({"error": _inband_message(exc)}) + b"\n")
        finally:
            gone.cancel()
            await _close(chunks)
        await end_stream(send)

    async def _embed(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        raw = body.get("input")
        if raw is None:
            raw = []
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise ApiError(400, "input must be a string or an array of strings")
        options, params = self._ollama_fields(body, "model", "input", "options")
        if not inputs:
            await self.pool.start()
            if not self._has_model(model):
                raise ApiError(404, f"model '{model}' not found")
            await send_json(send, {"model": model, "embeddings": []})
            return
        result = await self.pool.serve(
            EmbedRequest(model=model, inputs=tuple(inputs), options=options, params=params, protocol="ollama")
        )
        await send_json(send, tr.ollama_embed(model, result))

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string")
        options, params = self._ollama_fields(body, "model", "prompt", "options")
        if not prompt:
            await self.pool.start()
            if not self._has_model(model):
                raise ApiError(404, f"model '{model}' not found")
            await send_json(send, {"embedding": []})
            return
        one: Any = [prompt]  # (attrs types the tuple converter as taking no known items)
        result = await self.pool.serve(
            EmbedRequest(model=model, inputs=one, options=options, params=params, protocol="ollama")
        )
        await send_json(send, {"embedding": list(result.embeddings[0])})

    # -- OpenAI ------------------------------------------------------------------------------------------

    async def _v1_models(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        await self.pool.start()
        infos = self._model_infos()
        created = int(self._started_at)
        data = [
            {"id": infos[k].name, "object": "model", "created": created, "owned_by": "sollol"} for k in sorted(infos)
        ]
        await send_json(send, {"object": "list", "data": data})

    async def _v1_model(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        await self.pool.start()
        name = scope["path"][len("/v1/models/") :]
        info = self._model_infos().get(model_key(name))
        if info is None:
            raise ApiError(404, f"The model '{name}' does not exist", code="model_not_found", param="model")
        await send_json(
            send, {"id": info.name, "object": "model", "created": int(self._started_at), "owned_by": "sollol"}
        )

    async def _v1_chat(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        messages = tr.ollama_messages(body.get("messages"))
        options, params = tr.openai_request(body)
        ident = self._new_id("chatcmpl")
        created = int(time.time())
        listed: Any = messages  # (as above: the tuple converter's type)
        request = ChatRequest(model=model, messages=listed, options=options, params=params, protocol="openai")
        if not body.get("stream"):
            result = await self.pool.serve(request)
            await send_json(send, tr.openai_chat(model, result, ident, created))
            return
        chunks = await self.pool.stream(request)
        await self._sse(receive, send, chunks, model, ident, created, chat=True, usage=tr.include_usage(body))

    async def _v1_completions(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (one prompt per request)", param="prompt")
        options, params = tr.openai_request(body)
        ident = self._new_id("cmpl")
        created = int(time.time())
        request = GenerateRequest(model=model, prompt=prompt, options=options, params=params, protocol="openai")
        if not body.get("stream"):
            result = await self.pool.serve(request)
            await send_json(send, tr.openai_completion(model, result, ident, created))
            return
        chunks = await self.pool.stream(request)
        await self._sse(receive, send, chunks, model, ident, created, chat=False, usage=tr.include_usage(body))

    async def _v1_embeddings(self, scope: Scope, receive: Receive, send: Send, body: Any) -> None:
        model = require_model(body)
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise ApiError(
                400,
                "input must be a non-empty string or array of strings (token arrays are not supported)",
                param="input",
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(
                400, f"encoding_format must be 'float' or 'base64', not {encoding!r}", param="encoding_format"
            )
        options, params = tr.openai_request(body)
        result = await self.pool.serve(
            EmbedRequest(model=model, inputs=tuple(inputs), options=options, params=params, protocol="openai")
        )
        await send_json(send, tr.openai_embeddings(model, result, encoding == "base64"))

    async def _sse(
        self,
        receive: Receive,
        send: Send,
        chunks: AsyncIterator[Chunk],
        model: str,
        ident: str,
        created: int,
        *,
        chat: bool,
        usage: bool,
    ) -> None:
        first = await _first(chunks)
        await start_stream(send, SSE_TYPE)
        gone = _watch_disconnect(receive)
        piece = piece_sender(send)
        obj = "chat.completion.chunk" if chat else "text_completion"
        name = dumps(model).decode()
        head = f'{{"id":"{ident}","object":"{obj}","created":{created},"model":{name},'.encode()
        head += b'"system_fingerprint":"fp_sollol","choices":'
        role_sent = False
        calls_seen = False
        try:
            chunk: Chunk | None = first
            while chunk is not None:
                if chat:
                    delta: dict[str, Any] = {}
                    if not role_sent:
                        delta["role"] = "assistant"
                        role_sent = True
                    if chunk.text or "role" in delta:
                        delta["content"] = chunk.text
                    if chunk.thinking:
                        delta["reasoning"] = chunk.thinking
                    if chunk.tool_calls:
                        calls_seen = True
                        delta["tool_calls"] = tr.openai_tool_calls(chunk.tool_calls, ident, stream=True)
                    if delta:
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                        await piece(b"data: " + head + dumps([choice]) + b"}\n\n")
                    if chunk.done:
                        choice = {
                            "index": 0,
                            "delta": {},
                            "finish_reason": tr.finish_reason(chunk.done_reason, calls_seen),
                        }
                        await piece(b"data: " + head + dumps([choice]) + b"}\n\n")
                else:
                    if chunk.text or not chunk.done:
                        choice = {"text": chunk.text, "index": 0, "logprobs": None, "finish_reason": None}
                        await piece(b"data: " + head + dumps([choice]) + b"}\n\n")
                    if chunk.done:
                        choice = {
                            "text": "",
                            "index": 0,
                            "logprobs": None,
                            "finish_reason": tr.finish_reason(chunk.done_reason, False),
                        }
                        await piece(b"data: " + head + dumps([choice]) + b"}\n\n")
                if chunk.done:
                    if usage:
                        await piece(b"data: " + head + b'[],"usage":' + dumps(tr.openai_usage(chunk.usage)) + b"}\n\n")
                    await piece(b"data: [DONE]\n\n")
                    break
                if _gone(gone):
                    break
                chunk = await anext(chunks, None)
        except Exception as exc:
            error = api_error(exc, openai=True)
            payload = openai_body(error)
            payload["error"]["message"] = _inband_message(exc)  # type: ignore[index]
            await piece(b"data: " + dumps(payload) + b"\n\n")
        finally:
            gone.cancel()
            await _close(chunks)
        await end_stream(send)


# -- helpers ------------------------------------------------------------------------------------------


def _basic_password(token: bytes) -> bytes | None:
    try:
        return base64.b64decode(token, validate=True).partition(b":")[2] or None
    except ValueError:
        return None


async def _first(chunks: AsyncIterator[Any]) -> Any:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        raise ApiError(502, "the node ended the stream without any answer") from None
    except BaseException:
        await _close(chunks)
        raise


async def _close(chunks: AsyncIterator[Any]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing a stream failed", exc_info=True)


async def _disconnected(receive: Receive) -> bool:
    message = await receive()
    return bool(message.get("type") == "http.disconnect")


def _watch_disconnect(receive: Receive) -> asyncio.Future[bool]:
    """A future that finishes with True when the client goes away (the body was read already).

    A server that knows it already offers one as `receive.disconnected` (sollol.gateway.fastserver);
    under any other ASGI server a task waits for the `http.disconnect` message.
    """
    known: asyncio.Future[bool] | None = getattr(receive, "disconnected", None)
    if known is not None:
        return known
    return asyncio.ensure_future(_disconnected(receive))


def _gone(watch: asyncio.Future[bool]) -> bool:
    return watch.done() and not watch.cancelled() and watch.exception() is None and watch.result()


def _inband_message(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.message
    if isinstance(exc, SollolError):
        return str(exc)
    log.error("stream failed", exc_info=exc)
    return f"internal error in the gateway: {type(exc).__name__}"
