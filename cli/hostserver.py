"""The PromptServer of a headless host: what the executor, the progress hook and the host's own nodes call on
``server.PromptServer.instance``, without a socket.

The stand-in implements the messaging itself (``send_sync`` and friends: subclasses record or print events). Every
other attribute a host node asks for (v0.33's ``node_replace_manager``, ``user_manager``, ``routes`` of a newer
host, ...) is forwarded to one real ``server.PromptServer`` of the host, built on first use without a socket (its
constructor only builds managers and an aiohttp app; the socket is opened by ``start``), so the stand-in never lags
the host's server. Standard library only at import.
"""
from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("DynamiCrafter.headless")


def build_host_server(stand_in):
    """One ``server.PromptServer`` of the host in this process, with no socket and no running loop;
    ``PromptServer.instance`` stays ``stand_in`` (the constructor sets itself as the instance)."""
    import server as host_server

    cls = host_server.PromptServer
    loop = asyncio.new_event_loop()
    try:
        return cls(loop)
    finally:
        cls.instance = stand_in


class HeadlessServer:
    """What the executor, the progress hook and nodes call on server.PromptServer, without a server. Subclasses
    (the CLI's progress line, the tests' event recorder) override send_sync. Attributes it lacks come from the
    host's own PromptServer (``host_server()``)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets = {}
        self.sockets_metadata = {}
        self.supports = ["custom_nodes_from_web"]
        self.number = 0
        self.prompt_queue = None
        self.on_prompt_handlers = []

    def __getattr__(self, name):
        # only called for attributes the stand-in does not have
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.host_server(), name)

    def host_server(self):
        """The host's real PromptServer this stand-in forwards to (built once, on first use)."""
        real = self.__dict__.get("_host_server")
        if real is None:
            real = build_host_server(self)
            self.__dict__["_host_server"] = real
            log.debug("headless server: forwarding unknown attributes to the host's %s", type(real).__name__)
        return real

    def send_sync(self, event, data, sid=None):
        if event == "executing" and isinstance(data, dict) and data.get("node") is not None:
            self.last_node_id = data.get("node")

    async def send(self, event, data, sid=None):
        self.send_sync(event, data, sid)

    def send_progress_text(self, text, node_id, sid=None):
        self.send_sync("progress_text", {"node": node_id, "text": text}, sid)

    def queue_updated(self):
        pass

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)
