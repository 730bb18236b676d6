"""`sollol serve`: one Ollama- and OpenAI-compatible endpoint for the whole cluster.

```python
from sollol import AsyncPool
from sollol.gateway import Gateway

app = Gateway(AsyncPool(["http://127.0.0.1:11435", "http://127.0.0.1:8080"]), api_keys=["secret"])
# run `app` with any ASGI server, e.g. uvicorn
```
"""

from __future__ import annotations

from sollol.gateway.app import OLLAMA_VERSION, Gateway
from sollol.gateway.config import GatewayConfig
from sollol.gateway.wire import ApiError

__all__ = ["OLLAMA_VERSION", "ApiError", "Gateway", "GatewayConfig"]
