"""The HTTP service: webhooks, the ops API and the dashboard (`python starter.py`)."""

from __future__ import annotations

import logging

import uvicorn

from dunning import redaction
from dunning.api.app import create_app
from dunning.config import get_settings
from dunning.policies import publish_configured_policy
from dunning.store import Store


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.install()  # no email address or phone number reaches a log
    settings = get_settings()
    store = Store.from_settings(settings)
    store.upgrade()
    publish_configured_policy(store, settings)
    app = create_app(settings, store)
    uvicorn.run(app, host=settings.dunning_http_host, port=settings.dunning_http_port, log_level="info")


if __name__ == "__main__":
    main()
