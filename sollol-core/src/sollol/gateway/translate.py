"""Pure translations between the pool's results and the two client protocols.

The pool speaks Ollama's vocabulary (`options`, `format`, `think`, messages with `images`).
Ollama clients' fields go in untouched; OpenAI clients' fields are translated into it here,
and every field without a translation is passed on as it is.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from sollol.gateway.wire import ApiError, rfc3339_now
from sollol.inference import ChatResult, Chunk, EmbedResult, GenerateResult, ToolCall, Usage

# ---------------------------------------------------------------------------------------------
# Ollama responses


def ollama_metrics(usage: Usage | None, into: dict[str, Any]) -> dict[str, Any]:
    """Ollama's counters (nanoseconds; left out when zero or unknown, as Ollama does)."""
    if usage is None:
        return into
    if usage.total_duration:
        into["total_duration"] = int(usage.total_duration * 1e9)
    if usage.load_duration:
        into["load_duration"] = int(usage.load_duration * 1e9)
    if usage.prompt_tokens:
        into["prompt_eval_count"] = usage.prompt_tokens
    if usage.completion_tokens:
        into["eval_count"] = usage.completion_tokens
    return into


def is_ollama_payload(raw: Any, field: str) -> bool:
    """True when `raw` is a payload an Ollama node sent (so it can go out untouched)."""
    return isinstance(raw, dict) and "done" in raw and field in raw


def ollama_message(text: str, thinking: str | None, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """An assistant message in Ollama's form."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = [call.to_ollama() for call in calls]
    return message


def ollama_chat(model: str, result: ChatResult) -> dict[str, Any]:
    """A non-streamed `/api/chat` answer."""
    if is_ollama_payload(result.raw, "message"):
        return result.raw  # type: ignore[no-any-return]
    out: dict[str, Any] = {
        "model": model,
        "created_at": rfc3339_now(),
        "message": ollama_message(result.text, result.thinking, result.tool_calls),
        "done": True,
        "done_reason": result.done_reason or "stop",
    }
    return ollama_metrics(result.usage, out)


def ollama_generate(model: str, result: GenerateResult) -> dict[str, Any]:
    """A non-streamed `/api/generate` answer."""
    if is_ollama_payload(result.raw, "response"):
        return result.raw  # type: ignore[no-any-return]
    out: dict[str, Any] = {"model": model, "created_at": rfc3339_now(), "response": result.text}
    if result.thinking:
        out["thinking"] = result.thinking
    out["done"] = True
    out["done_reason"] = result.done_reason or "stop"
    return ollama_metrics(result.usage, out)


def ollama_chunk(model: str, chunk: Chunk, chat: bool) -> list[dict[str, Any]]:
    """The NDJSON objects for one streamed chunk (a final chunk with tool calls gives two)."""
    raw = chunk.raw
    if isinstance(raw, dict) and "done" in raw and ("message" in raw if chat else "response" in raw):
        return [raw]
    out: list[dict[str, Any]] = []
    if chunk.done and chunk.tool_calls and chat:
        out.append(
            {
                "model": model,
                "created_at": rfc3339_now(),
                "message": ollama_message("", None, chunk.tool_calls),
                "done": False,
            }
        )
    line: dict[str, Any] = {"model": model, "created_at": rfc3339_now()}
    calls = () if chunk.done else chunk.tool_calls
    if chat:
        line["message"] = ollama_message(chunk.text, chunk.thinking, calls)
    else:
        line["response"] = chunk.text
        if chunk.thinking:
            line["thinking"] = chunk.thinking
    line["done"] = chunk.done
    if chunk.done:
        line["done_reason"] = chunk.done_reason or "stop"
        ollama_metrics(chunk.usage, line)
    out.append(line)
    return out


def ollama_embed(model: str, result: EmbedResult) -> dict[str, Any]:
    """An `/api/embed` answer."""
    raw = result.raw
    if isinstance(raw, dict) and "embeddings" in raw:
        return raw
    out: dict[str, Any] = {"model": model, "embeddings": [list(v) for v in result.embeddings]}
    return ollama_metrics(result.usage, out)


# ---------------------------------------------------------------------------------------------
# OpenAI requests into the pool's vocabulary

#: OpenAI fields that become Ollama `options`.
OPENAI_OPTIONS = {
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}
#: Fields the gateway itself consumes (the pool always streams with usage).
GATEWAY_FIELDS = frozenset(
    {"model", "messages", "prompt", "input", "stream", "stream_options", "encoding_format", "response_format"}
)


def _text_and_images(parts: Sequence[Any]) -> tuple[str | None, list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for part in parts:
        if not isinstance(part, Mapping):
            return None, []
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str):
                raise ApiError(400, "image_url parts need a url", param="messages")
            images.append(url.split(",", 1)[1] if url.startswith("data:") and "," in url else url)
        else:
            return None, []  # a part the pool has no words for: pass the list on untouched
    return "\n".join(texts), images


def ollama_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages as the pool's (Ollama's) messages: text parts joined, images apart,
    tool-call arguments parsed to objects. Every other key stays as it is."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "each message must be an object with a 'role'", param="messages")
        content = message.get("content")
        calls = message.get("tool_calls")
        if isinstance(content, str) and not calls:
            out.append(message)
            continue
        converted = dict(message)
        if content is None:
            converted["content"] = ""
        elif isinstance(content, list):
            text, images = _text_and_images(content)
            if text is not None:
                converted["content"] = text
                if images:
                    converted["images"] = images
        if isinstance(calls, list):
            fixed = []
            for call in calls:
                function = dict(call.get("function") or {}) if isinstance(call, Mapping) else {}
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    try:
                        function["arguments"] = json.loads(arguments) if arguments.strip() else {}
                    except ValueError:
                        raise ApiError(
                            400, f"tool call arguments are not JSON: {arguments[:100]!r}", param="messages"
                        ) from None
                entry = {k: v for k, v in call.items() if k != "function"} if isinstance(call, Mapping) else {}
                entry["function"] = function
                fixed.append(entry)
            converted["tool_calls"] = fixed
        out.append(converted)
    return out


def openai_request(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options, params) for the pool from an OpenAI request body."""
    options: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in body.items():
        if key in GATEWAY_FIELDS:
            continue
        option = OPENAI_OPTIONS.get(key)
        if option is not None:
            if value is None:
                continue
            options[option] = [value] if option == "stop" and isinstance(value, str) else value
        elif key == "reasoning_effort" and value in ("low", "medium", "high"):
            params["think"] = value
        elif key == "reasoning_effort" and value == "none":
            params["think"] = False
        else:
            params[key] = value
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        kind = fmt.get("type")
        if kind == "json_object":
            params["format"] = "json"
        elif kind == "json_schema":
            schema = fmt.get("json_schema")
            inner = schema.get("schema") if isinstance(schema, Mapping) else None
            params["format"] = inner if isinstance(inner, Mapping) else "json"
        elif kind not in (None, "text"):
            raise ApiError(400, f"response_format type {kind!r} is not supported", param="response_format")
    return options, params


def include_usage(body: Mapping[str, Any]) -> bool:
    """Whether a streamed answer should end with a usage chunk."""
    opts = body.get("stream_options")
    return isinstance(opts, Mapping) and bool(opts.get("include_usage"))


# ---------------------------------------------------------------------------------------------
# OpenAI responses


def finish_reason(done_reason: str | None, has_calls: bool) -> str:
    """Ollama's done_reason in OpenAI's finish_reason words."""
    if has_calls:
        return "tool_calls"
    if done_reason == "length":
        return "length"
    if done_reason == "content_filter":
        return "content_filter"
    return "stop"


def openai_usage(usage: Usage | None) -> dict[str, int]:
    """OpenAI's usage object (zeros where the node did not say)."""
    prompt = (usage.prompt_tokens if usage else None) or 0
    completion = (usage.completion_tokens if usage else None) or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def openai_tool_calls(calls: Sequence[ToolCall], prefix: str, stream: bool) -> list[dict[str, Any]]:
    """Tool calls in OpenAI's form (arguments as a JSON string)."""
    out = []
    for index, call in enumerate(calls):
        entry: dict[str, Any] = {
            "id": call.id or f"call_{prefix}_{index}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments), separators=(",", ":"))},
        }
        if stream:
            entry["index"] = index
        out.append(entry)
    return out


def openai_chat(model: str, result: ChatResult, ident: str, created: int) -> dict[str, Any]:
    """A non-streamed chat completion; an OpenAI-speaking node's own answer goes out as it came."""
    raw = result.raw
    if isinstance(raw, dict) and raw.get("object") == "chat.completion" and isinstance(raw.get("choices"), list):
        return raw
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.thinking:
        message["reasoning"] = result.thinking
    if result.tool_calls:
        message["tool_calls"] = openai_tool_calls(result.tool_calls, ident, stream=False)
    return {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_sollol",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(result.done_reason, bool(result.tool_calls)),
            }
        ],
        "usage": openai_usage(result.usage),
    }


def openai_completion(model: str, result: GenerateResult, ident: str, created: int) -> dict[str, Any]:
    """A non-streamed text completion."""
    raw = result.raw
    if isinstance(raw, dict) and raw.get("object") == "text_completion" and isinstance(raw.get("choices"), list):
        return raw
    return {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_sollol",
        "choices": [
            {
                "text": result.text,
                "index": 0,
                "logprobs": None,
                "finish_reason": finish_reason(result.done_reason, False),
            }
        ],
        "usage": openai_usage(result.usage),
    }


def openai_embeddings(model: str, result: EmbedResult, base64_floats: bool) -> dict[str, Any]:
    """An embeddings answer; vectors as float lists or base64 of little-endian float32."""
    data = []
    for index, vector in enumerate(result.embeddings):
        packed = struct.pack(f"<{len(vector)}f", *vector) if base64_floats else b""
        value: Any = base64.b64encode(packed).decode() if base64_floats else list(vector)
        data.append({"object": "embedding", "embedding": value, "index": index})
    prompt = (result.usage.prompt_tokens or 0) if result.usage else 0
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
