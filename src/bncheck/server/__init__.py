"""bncheck's HTTP service: FastAPI app, schemas, tensor codec, routes and errors."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
