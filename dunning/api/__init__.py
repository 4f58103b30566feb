"""The HTTP service: webhooks, ops API and dashboard."""
