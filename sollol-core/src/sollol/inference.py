"""The requests a pool serves (chat, generate, embed) and what comes back.

Requests carry every option the caller gave, untouched: `options` is Ollama's options
object and `params` holds every other top-level field (format, tools, keep_alive, think,
images, system, template, raw, ...). Codecs translate them for their server; the Ollama
codec sends them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from sollol.node import Node

Operation = Literal["chat", "generate", "embed"]


def _mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


@attrs.frozen(kw_only=True)
class ChatRequest:
    """A chat: `messages` in Ollama/OpenAI form (role, content, images, tool_calls...)."""

    model: str
    messages: tuple[Mapping[str, Any], ...] = attrs.field(converter=tuple)
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    #: the client's protocol ("ollama", "openai": the gateway sets it; "python" for library
    #: calls): a label for observers, never sent to a node
    protocol: str = "python"
    operation: Operation = attrs.field(default="chat", init=False)

    @property
    def prompt_key(self) -> str:
        """Text that identifies the conversation's start, for affinity routing."""
        parts = []
        for message in self.messages[:2]:
            content = message.get("content")
            parts.append(content if isinstance(content, str) else repr(content))
        return "\x1f".join(parts)


@attrs.frozen(kw_only=True)
class GenerateRequest:
    """A completion of `prompt`."""

    model: str
    prompt: str = ""
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    #: the client's protocol ("ollama", "openai": the gateway sets it; "python" for library
    #: calls): a label for observers, never sent to a node
    protocol: str = "python"
    operation: Operation = attrs.field(default="generate", init=False)

    @property
    def prompt_key(self) -> str:
        """Text that identifies the prompt's start, for affinity routing."""
        return str(self.params.get("system", "")) + "\x1f" + self.prompt[:256]


@attrs.frozen(kw_only=True)
class EmbedRequest:
    """Embeddings for one or more inputs."""

    model: str
    inputs: tuple[str, ...] = attrs.field(converter=tuple)
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    params: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    #: the client's protocol ("ollama", "openai": the gateway sets it; "python" for library
    #: calls): a label for observers, never sent to a node
    protocol: str = "python"
    operation: Operation = attrs.field(default="embed", init=False)

    @property
    def prompt_key(self) -> str:
        """Embeddings have no useful affinity; the first input stands in."""
        return self.inputs[0][:256] if self.inputs else ""


Request = ChatRequest | GenerateRequest | EmbedRequest


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts and timings, each None where the backend did not say."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_duration: float | None = None  # seconds
    load_duration: float | None = None  # seconds

    @property
    def total_tokens(self) -> int | None:
        """Prompt plus completion tokens, when both are known."""
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


@attrs.frozen(kw_only=True)
class Route:
    """Why a request went where it went: the node, the nodes tried, and the score."""

    node: str
    tried: tuple[str, ...] = ()
    policy: str = ""
    score: float | None = None
    parts: tuple[tuple[str, float], ...] = ()
    failures: tuple[tuple[str, str], ...] = ()
    queued: float = 0.0  # seconds spent waiting for a free node

    def explain(self) -> str:
        """One line for people: where it went and why."""
        parts = ", ".join(f"{k}={v:.3g}" for k, v in self.parts)
        failed = "; ".join(f"{n} failed: {why}" for n, why in self.failures)
        text = f"served by {self.node} via {self.policy or 'default'}"
        if self.score is not None:
            text += f" (score {self.score:.3g}: {parts})"
        if failed:
            text += f"; {failed}"
        return text


@attrs.frozen(kw_only=True)
class ToolCall:
    """One tool call, with `arguments` always a parsed JSON object."""

    name: str
    arguments: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    id: str | None = None

    def to_ollama(self) -> dict[str, Any]:
        """The Ollama wire form (arguments as an object)."""
        return {"function": {"name": self.name, "arguments": dict(self.arguments)}}


@attrs.frozen(kw_only=True)
class ChatResult:
    """A finished chat answer."""

    model: str
    text: str
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    done_reason: str | None = None
    usage: Usage = Usage()
    raw: Any = None
    node: Node | None = None
    route: Route | None = None

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message in Ollama's form."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.thinking:
            message["thinking"] = self.thinking
        if self.tool_calls:
            message["tool_calls"] = [call.to_ollama() for call in self.tool_calls]
        return message


@attrs.frozen(kw_only=True)
class GenerateResult:
    """A finished completion."""

    model: str
    text: str
    thinking: str | None = None
    done_reason: str | None = None
    usage: Usage = Usage()
    raw: Any = None
    node: Node | None = None
    route: Route | None = None


@attrs.frozen(kw_only=True)
class EmbedResult:
    """Embedding vectors, one per input, in input order."""

    model: str
    embeddings: Sequence[Sequence[float]]
    usage: Usage = Usage()
    raw: Any = None
    node: Node | None = None
    route: Route | None = None


Result = ChatResult | GenerateResult | EmbedResult


@attrs.frozen(kw_only=True)
class Chunk:
    """One piece of a streamed answer. The last one has `done=True` and the usage."""

    text: str = ""
    thinking: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    done: bool = False
    done_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    raw: Any = None
    node: Node | None = None
    route: Route | None = None
