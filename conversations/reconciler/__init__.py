"""The reconciler: finds jobs no one will finish and finishes or restarts them, within seconds.

Delivery is at least once and claims are idempotent, but a few faults leave a
job that nothing will move on: a worker killed mid-answer (its message comes
back only after the visibility timeout, 15 minutes), a message lost with a
Redis restart or between a worker's pop and its record of it, a cancel asked
of a job whose worker died, an answer the database could not take, a final
event Redis could not take. ``manage.py reconcile`` runs a pass every
``LLM_RECONCILE_INTERVAL`` seconds: ``jobs`` (running and queued jobs),
``finals`` (final events missing from the streams). Every action is a
conditional update or an idempotent publish, so two reconcilers at once are
safe (one per deployment is enough). Each action is logged as a
``job_reconciled`` event and counted (``report``).
"""
