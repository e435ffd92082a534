"""Signals the delivery pipeline sends, so other apps can react without being imported here."""

from django.dispatch import Signal

# Sent after each attempt of a run or job callback delivery, with `delivery` and `attempt`;
# agents_hooks records the outcome on the Run/Job row (seed 003's callback_* fields).
callback_attempted = Signal()
