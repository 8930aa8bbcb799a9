"""Exec subprotocol names (kept apart from exec.py so importing them does not load aiohttp)."""

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
