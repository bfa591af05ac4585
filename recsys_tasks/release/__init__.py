"""The release lifecycle: quality gate, loads, smoke test, promotion, status and rollback.

Policy lives here, above the store adapters (`recsys_tasks.stores`) and the serving path it checks
(`recsys_tasks.serving`); the registry's state machine is `registry.py`.
"""
