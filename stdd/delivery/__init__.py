"""Delivery of results and notifications: SkyPortal, TOM Toolkit, Apprise (docs/delivery.md).

Flow: an event (a frame done, an alert's action run, daemon trouble, a confirmed candidate)
writes outbox items in its own transaction (`enqueue`); the daemon's `DeliveryService` sends
them off the event loop, retries with backoff and records every outcome (`sender`).
"""
from .enqueue import enqueue_frame, notify, notify_confirmed_candidates

__all__ = ["enqueue_frame", "notify", "notify_confirmed_candidates"]
