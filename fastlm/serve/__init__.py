"""The fastlm HTTP server (extra `fastlm[serve]`): `create_app(model, name)` and its limits.

from fastlm.serve import create_app
app = create_app(fastlm.load("transformer"), "transformer")   # an ASGI app (FastAPI)
"""

from fastlm.serve.requests import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # fastapi loads only when the app is built
        from fastlm.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'fastlm.serve' has no attribute {name!r}")
