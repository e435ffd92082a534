"""Signals the delivery pipeline sends, so other apps, and modules above `store`, can react
without being imported here."""

from django.dispatch import Signal

# Sent after each attempt of a run or job callback delivery, with `delivery` and `attempt`;
# agents_hooks records the outcome on the Run/Job row (seed 003's callback_* fields).
callback_attempted = Signal()

# Sent by store.record after every batch, inside the transaction that writes its outcomes, with
# `deliveries` (their new state) and `changes` (webhooks.health.Changes: endpoints disabled,
# and those whose failures in a row crossed the threshold, by this batch). Receivers run on
# every batch, so they must be cheap; deliveries/operational.py publishes from it.
outcomes_recorded = Signal()
