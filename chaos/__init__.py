"""Chaos suite and the journey benchmark's harness: the whole stack as real processes.

`python -m chaos` (`make chaos N=30`) starts a Temporal dev server on its own SQLite file, two
worker processes and the HTTP service, drives journeys through signed Stripe webhooks, kills
workers, restarts the server, and checks afterwards that every journey ended where its scenario
says, with each charge made once at the gateway and each message sent once. `chaos.stack` is
shared with `bench/journeys.py`.
"""
