"""The HTTP service in a container: exactly `python starter.py`, listening on DUNNING_HTTP_HOST.

starter.py binds 127.0.0.1 (right for `make up`); a container must listen on its own interface.
"""

from __future__ import annotations

import uvicorn

import starter
from dunning.config import get_settings


class _Uvicorn:
    """starter's uvicorn, with the bind address and proxy headers a container needs."""

    def __getattr__(self, name):
        return getattr(uvicorn, name)

    @staticmethod
    def run(app, **options):
        options["host"] = get_settings().dunning_http_host
        options.setdefault("proxy_headers", True)
        uvicorn.run(app, **options)


if __name__ == "__main__":
    starter.uvicorn = _Uvicorn()
    starter.main()
