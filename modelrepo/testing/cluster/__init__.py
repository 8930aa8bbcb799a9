"""A local Kubernetes API emulator that the real ``kubectl`` and ``kubernetes`` client accept.

``LocalCluster`` serves discovery, namespaces, PersistentVolumeClaims (host folders), Pods
(run in busybox-like sandboxes), Jobs, Services/Endpoints, watch, logs and exec over
WebSocket (``v5.channel.k8s.io`` and ``v4.channel.k8s.io``), with fault hooks for tests.
"""

from __future__ import annotations

from modelrepo.testing.cluster.cluster import LocalCluster
from modelrepo.testing.cluster.faults import Faults
from modelrepo.testing.cluster.protocol import V4, V5
from modelrepo.testing.cluster.sandbox import Image, ImageRegistry, host_tools_image

__all__ = ["V4", "V5", "Faults", "Image", "ImageRegistry", "LocalCluster", "host_tools_image"]
