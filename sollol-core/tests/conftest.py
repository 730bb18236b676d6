from __future__ import annotations

# pytester's in-process runs (test_contract_suite.py) unload every module first imported
# inside them. httpx fills its httpcore-to-httpx exception map on first use; if that first
# use, and the first import of httpcore, happened inside such a run, later tests would get
# a fresh httpcore whose exceptions the stale map no longer recognises, and raw
# httpcore.ConnectError would escape httpx. Importing both here keeps one httpcore.
import httpcore  # noqa: F401
import httpx  # noqa: F401
