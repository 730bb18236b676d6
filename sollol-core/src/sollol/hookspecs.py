"""The hooks plugins implement. Import `hookimpl` from `sollol` to implement one.

Hooks register things and make pure decisions; they never do network I/O. There are four
concerns: discovery (where nodes may be), detection (is this server my kind?), pool
requests (backend codecs and routing policies), and activity reporting (observers of what
the pool does). Each hook is documented with an example in `docs/plugin-hooks.md`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from sollol.activity import ActivityEvent, RequestRecord
    from sollol.codec import Backend
    from sollol.detection import Detection, ProbeSet
    from sollol.discovery import DiscoverySource
    from sollol.http import HttpRequest

hookspec = pluggy.HookspecMarker("sollol")


@hookspec
def sollol_register_backends(register: Callable[[Backend], None]) -> None:
    """Pool requests: register backend codecs by calling `register(backend)` for each.

    A backend is any object with the shape of `sollol.codec.Backend`. Its `name` must be
    unique across installed plugins: two plugins registering one name is an error that
    names both. Every implementation is called.
    """


@hookspec
def sollol_register_policies(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Pool requests: register routing policies by name, `register(name, factory)`.

    `factory(**settings)` returns an object with `name` and
    `choose(candidates, request, rng) -> sollol.routing.Choice`. A name registered twice
    is an error. Every implementation is called.
    """


@hookspec
def sollol_detection_probes() -> Sequence[HttpRequest]:
    """Detection: the GET requests this plugin needs answered to recognise its server.

    The core unions every plugin's probes, sends each once, in parallel, with a short
    timeout, and hands all the answers to `sollol_detect`. Every implementation is called.
    """
    raise NotImplementedError


@hookspec
def sollol_detect(probes: ProbeSet) -> Detection | None:
    """Detection: given the probe answers for one URL, claim it or return None.

    Return a `Detection` with a confidence from 0 to 100; the core keeps the most confident
    claim. Must not raise for odd answers: a server that is not yours is not an error.
    Every implementation is called.
    """


@hookspec
def sollol_register_discovery_sources(register: Callable[[DiscoverySource], None]) -> None:
    """Discovery: register sources of candidate nodes, `register(source)` for each.

    A source has a `name` and `candidates(context) -> Iterable[NodeSpec]`, pure (it may
    read files and the environment; it never touches the network). The core probes what
    sources return. Every implementation is called.
    """


@hookspec
def sollol_activity_event(event: ActivityEvent) -> None:
    """Activity reporting: observe an event (node up/down, routed, finished, failed...).

    Called on the pool's event loop for every event, in order, within 10 ms of it
    (`sollol.pool.DELIVERY_DELAY`; node, circuit and model changes at once, and
    `pool.deliver_activity()` delivers now); keep it quick and do no I/O (queue the work).
    An observer that raises is logged and skipped, never breaks a request.
    Every implementation is called. Implement this or `sollol_activity_batch`.
    """


@hookspec
def sollol_activity_batch(batch: Sequence[RequestRecord | ActivityEvent]) -> None:
    """Activity reporting, in bulk: everything that happened since the last batch, in order.

    Request attempts (routed, finished, failed) come as `RequestRecord` tuples, every other
    event as an `ActivityEvent`; `entry.event()` turns a record into the event that
    `sollol_activity_event` observers get. One call per delivery instead of one per
    event: the way for an observer that counts every request (the gateway's metrics and
    dashboard do) to cost the pool little. Same rules as `sollol_activity_event`; the batch is
    the observer's to keep. Every implementation is called.
    """
