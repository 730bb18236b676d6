"""SOLLOL: run a cluster of local LLM servers (Ollama, vLLM, TGI, llama.cpp, LocalAI) as one."""

from __future__ import annotations

from sollol.activity import Activity, ActivityEvent, LoadedModel, ModelInfo
from sollol.detect import DetectedNode, detect, detect_async
from sollol.detection import Detection, NodeState, ProbeSet
from sollol.errors import (
    AllNodesFailedError,
    BackendError,
    BusyError,
    ConfigError,
    NoNodeForModelError,
    SollolError,
    StreamInterruptedError,
)
from sollol.inference import (
    ChatRequest,
    ChatResult,
    Chunk,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    Route,
    ToolCall,
    Usage,
)
from sollol.node import Node, parse_node
from sollol.plugins import Plugins, hookimpl
from sollol.pool import AsyncPool
from sollol.sync import (
    AsyncLlamaCppPool,
    AsyncLocalAIPool,
    AsyncOllamaPool,
    AsyncTGIPool,
    AsyncVLLMPool,
    LlamaCppPool,
    LocalAIPool,
    OllamaPool,
    Pool,
    TGIPool,
    VLLMPool,
)
from sollol.unified import AsyncUnifiedPool as AsyncUnifiedPool
from sollol.unified import UnifiedPool as UnifiedPool
from sollol.unified import auto_discover_async as auto_discover_async
from sollol.unified import discover_llamacpp_nodes as discover_llamacpp_nodes
from sollol.unified import discover_localai_nodes as discover_localai_nodes
from sollol.unified import discover_ollama_nodes as discover_ollama_nodes
from sollol.unified import discover_tgi_nodes as discover_tgi_nodes
from sollol.unified import discover_vllm_nodes as discover_vllm_nodes

__version__ = "0.1.0"

__all__ = [
    "Activity",
    "ActivityEvent",
    "AllNodesFailedError",
    "AsyncLlamaCppPool",
    "AsyncLocalAIPool",
    "AsyncOllamaPool",
    "AsyncPool",
    "AsyncTGIPool",
    "AsyncVLLMPool",
    "BackendError",
    "BusyError",
    "ChatRequest",
    "ChatResult",
    "Chunk",
    "ConfigError",
    "DetectedNode",
    "Detection",
    "EmbedRequest",
    "EmbedResult",
    "GenerateRequest",
    "GenerateResult",
    "LlamaCppPool",
    "LoadedModel",
    "LocalAIPool",
    "ModelInfo",
    "NoNodeForModelError",
    "Node",
    "NodeState",
    "OllamaPool",
    "Plugins",
    "Pool",
    "ProbeSet",
    "Route",
    "SollolError",
    "StreamInterruptedError",
    "TGIPool",
    "ToolCall",
    "Usage",
    "VLLMPool",
    "detect",
    "detect_async",
    "hookimpl",
    "parse_node",
]
