"""Managed llama-server processes: lifecycle tested with stand-in binaries (the real one is in /tests)."""

from __future__ import annotations

import stat
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from sollol.errors import ConfigError
from sollol_llamacpp.managed import BINARY_ENV, LlamaServer, ManagedCluster, ServerStartError

#: A stand-in `llama-server`: the emulator, started with llama-server's flags.
EMULATED = """
import argparse, asyncio, uvicorn
from sollol.testing.emulator import EmulatedModel, EmulatorConfig
from sollol_llamacpp.emulator import LlamaCppEmulator
p = argparse.ArgumentParser()
p.add_argument("-m"); p.add_argument("--alias"); p.add_argument("--host"); p.add_argument("--port", type=int)
p.add_argument("-c", type=int, default=4096); p.add_argument("-np", type=int, default=4)
p.add_argument("--metrics", action="store_true"); p.add_argument("--embeddings", action="store_true")
p.add_argument("--pooling")
a = p.parse_args()
print("stand-in llama-server", a.alias, flush=True)
model = EmulatedModel(name=a.alias, embedding=a.embeddings, context_length=a.c)
app = LlamaCppEmulator(EmulatorConfig(models=[model], parallel=a.np), metrics=a.metrics, embeddings=a.embeddings)
asyncio.run(uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning")).serve())
"""
FAILING = """
import sys
print("error: failed to load model 'broken.gguf'", flush=True)
sys.exit(1)
"""
#: Dies of SIGNAL unless `--no-repack` is given, like llama.cpp's AMX kernels on a VM without AMX
#: (seen here: SIGILL for a chat server, SIGSEGV for an embeddings server, on one machine).
NO_AMX = """
import os, signal, sys
if "--no-repack" not in sys.argv:
    os.kill(os.getpid(), signal.SIGNAL)
""" + EMULATED.replace("a = p.parse_args()", 'p.add_argument("--no-repack", action="store_true")\na = p.parse_args()')
STUBBORN = """
import signal, socketserver, http.server, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"status":"ok"}')
    def log_message(self, *a): pass
port = int(sys.argv[sys.argv.index("--port") + 1])
socketserver.TCPServer(("127.0.0.1", port), H).serve_forever()
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> Path:
    script = tmp_path / "llama-server"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(source))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(BINARY_ENV, str(script))
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    return model


def test_start_wait_and_stop(tmp_path, monkeypatch):
    model = stand_in(tmp_path, monkeypatch, EMULATED)
    with LlamaServer.start(model=model, alias="tiny", log_dir=tmp_path, ready_timeout=30) as server:
        assert server.running
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == "tiny"
        assert "--metrics" in server.args
    assert not server.running
    assert "stand-in llama-server tiny" in server.log_path.read_text()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")


def test_a_server_that_exits_while_starting_reports_its_log(tmp_path, monkeypatch):
    model = stand_in(tmp_path, monkeypatch, FAILING)
    with pytest.raises(ServerStartError, match="failed to load model") as caught:
        LlamaServer.start(model=model, log_dir=tmp_path, ready_timeout=30)
    assert "exited with status 1" in str(caught.value)


def test_a_server_that_ignores_sigterm_is_killed(tmp_path, monkeypatch):
    model = stand_in(tmp_path, monkeypatch, STUBBORN)
    server = LlamaServer.start(model=model, log_dir=tmp_path, ready_timeout=30)
    server.stop(timeout=0.5)
    assert not server.running
    assert server.process.returncode == -9


def test_cluster_of_chat_and_embedding_nodes_serves_a_pool(tmp_path, monkeypatch):
    model = stand_in(tmp_path, monkeypatch, EMULATED)
    with ManagedCluster(chat=1, embed=1, model=model, log_dir=tmp_path, ready_timeout=30) as cluster:
        assert (cluster.chat_model, cluster.embed_model) == ("model", "model-embed")
        with cluster.pool(refresh_interval=0) as pool:
            assert pool.chat("model", [{"role": "user", "content": "hi"}]).text
            assert len(pool.embed("model-embed", ["a", "b"]).embeddings) == 2
    assert not any(s.running for s in cluster)


def test_only_loopback_addresses(tmp_path, monkeypatch):
    model = stand_in(tmp_path, monkeypatch, EMULATED)
    with pytest.raises(ConfigError, match="loopback"):
        LlamaServer.start(model=model, host="0.0.0.0")


def test_a_missing_model_file_is_a_config_error(tmp_path, monkeypatch):
    stand_in(tmp_path, monkeypatch, EMULATED)
    with pytest.raises(ConfigError, match="does not exist"):
        LlamaServer.start(model=tmp_path / "nope.gguf")


@pytest.mark.parametrize("signal_name", ["SIGILL", "SIGSEGV"])
def test_a_server_killed_by_its_cpu_kernels_is_restarted_without_repacking(tmp_path, monkeypatch, signal_name):
    model = stand_in(tmp_path, monkeypatch, NO_AMX.replace("SIGNAL", signal_name))
    with LlamaServer.start(model=model, log_dir=tmp_path, ready_timeout=30) as server:
        assert "--no-repack" in server.args
        assert httpx.get(f"{server.url}/health").status_code == 200
    with LlamaServer.start(model=model, log_dir=tmp_path, ready_timeout=30) as again:
        assert "--no-repack" in again.args  # learned: no second crash
    assert len(list(tmp_path.glob("*.log"))) == 3  # the crash, its retry, and one clean start
