"""Load Triton's model-config protobuf module without needing grpc.

``tritonclient.grpc.model_config_pb2`` is plain generated protobuf code, but importing it the
usual way runs ``tritonclient/grpc/__init__.py``, which imports ``grpc`` and fails when only
``tritonclient[http]`` is installed. So the module file is executed on its own instead.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from modelrepo.errors import ModelRepoError

_CANONICAL = "tritonclient.grpc.model_config_pb2"
_PRIVATE = "modelrepo.layout._triton_model_config_pb2"


@functools.lru_cache(maxsize=1)
def load_model_config_pb2() -> ModuleType:
    """Triton's ``model_config_pb2`` module, loaded from its file (grpc is never imported).

    If the regular module was already imported it is reused, so there is one set of classes.
    Loading the file a second time under another name is harmless: protobuf registers the
    same ``model_config.proto`` once and hands out the same message classes.
    """
    existing = sys.modules.get(_CANONICAL) or sys.modules.get(_PRIVATE)
    if existing is not None:
        return existing
    spec = importlib.util.find_spec("tritonclient")  # finds the package, runs nothing
    locations = list(spec.submodule_search_locations or []) if spec else []
    candidates = [Path(loc, "grpc", "model_config_pb2.py") for loc in locations]
    source = next((p for p in candidates if p.is_file()), None)
    if source is None:
        raise ModelRepoError(
            "Triton's model-config protobuf (tritonclient/grpc/model_config_pb2.py) was not found",
            hint="install the client library: pip install 'tritonclient[http]'",
        )
    module_spec = importlib.util.spec_from_file_location(_PRIVATE, source)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # protobuf runtime older than the generated code, mostly
        from google.protobuf import __version__ as protobuf_version

        raise ModelRepoError(
            f"cannot load {source} with protobuf {protobuf_version}: {exc}",
            hint="upgrade protobuf to the version tritonclient was built for: "
            "pip install -U protobuf",
        ) from exc
    sys.modules[_PRIVATE] = module
    return module
