"""The model registry as a state machine: the one place that says how a model version's status changes.

```
               quality_gate / smoke_test
   candidate ───────────────────────────► rejected
      │
      │ promote*
      ▼        promote* / rollback*    ┌─────────┐
    active ───────────────────────────►│ retired │
      ▲                                └────┬────┘
      └─────────────────────────────────────┘ rollback*

   * or reconcile, completing that very change after the alias switch
```

`reconcile` only repairs the registry to match the alias, which only a promotion or a rollback moves (and
a promotion never to a version served before), so retired -> active is still rollback only.

Every change goes through `Registry`, which refuses an illegal transition (IllegalTransition) and
applies each legal one as a compare-and-set in the catalog database, so two processes can never both
make a change from the same state. "Was ever served" is the `promoted_at` column, set on the first
promotion and never cleared, not something inferred from a status.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from recsys_tasks.stores.catalog import Catalog, utcnow

Action = Literal["register", "quality_gate", "smoke_test", "promote", "rollback", "reconcile"]
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    ("candidate", "rejected"): frozenset({"quality_gate", "smoke_test"}),
    ("candidate", "active"): frozenset({"promote", "reconcile"}),
    ("active", "retired"): frozenset({"promote", "rollback", "reconcile"}),
    ("retired", "active"): frozenset({"rollback", "reconcile"}),
}
STATUSES = ("candidate", "active", "retired", "rejected")


class IllegalTransition(RuntimeError):
    """A status change the state machine does not allow (a bug, or a concurrent change)."""


def check(current: str, new: str, action: Action) -> None:
    if action not in TRANSITIONS.get((current, new), frozenset()):
        allowed = sorted(f"{a}->{b} by {', '.join(sorted(by))}" for (a, b), by in TRANSITIONS.items())
        raise IllegalTransition(f"{action}: {current} -> {new} is not allowed; allowed: {'; '.join(allowed)}")


def recency(row: dict[str, Any] | None) -> tuple[int, datetime]:
    """How new a version's data is: the snapshot's newest rating, then the run date (unknown = oldest)."""
    row = row or {}
    return (int(row["data_ts"]) if row.get("data_ts") is not None else -1, row.get("run_date") or datetime.min)


class Registry:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def get(self, version: str) -> dict[str, Any] | None:
        return self.catalog.version(version)

    def active(self) -> dict[str, Any] | None:
        rows = self.catalog.versions("active")
        if len(rows) > 1:
            raise IllegalTransition(f"{len(rows)} active versions: {[r['version'] for r in rows]}")
        return rows[0] if rows else None

    def register(self, version: str, *, snapshot_id: str | None, catalog_id: str, data_ts: int | None,
                 run_date: date, metrics: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
        """A new version as a candidate; an existing one keeps its status and its facts (idempotent)."""
        added = self.catalog.insert_version(
            version, snapshot_id=snapshot_id, catalog_id=catalog_id, data_ts=data_ts,
            run_date=datetime.combine(run_date, datetime.min.time()), metrics=metrics, rule=rule,
            status="candidate")
        row = self.get(version)
        assert row is not None
        if not added and row["catalog_id"] != catalog_id:  # a version is one model on one snapshot
            raise IllegalTransition(f"model version {version} is registered with catalog {row['catalog_id']}, "
                                    f"not {catalog_id}")
        return row

    def note(self, version: str, reason: str) -> None:
        """Say why a candidate stays a candidate (held back by the promotion rules)."""
        self.catalog.update_versions([(version, ("candidate",), {"reason": reason})])

    def reject(self, version: str, reason: str, action: Action) -> None:
        """candidate -> rejected; a version already rejected keeps its first reason."""
        row = self.get(version)
        if row is None or row["status"] == "rejected":
            return
        check(row["status"], "rejected", action)
        self.catalog.update_versions([(version, ("candidate",), {"status": "rejected", "reason": reason})])

    def activate(self, version: str, action: Action, reason: str) -> str | None:
        """`version` becomes active and the active one retired, in one transaction; returns the retired one."""
        row, live = self.get(version), self.active()
        if row is None:
            raise LookupError(f"model version {version} is not registered")
        if live is not None and live["version"] == version:
            return None
        check(row["status"], "active", action)
        now = utcnow()
        changes: list[tuple[str, tuple[str, ...], dict[str, Any]]] = []
        if live is not None:
            check("active", "retired", action)
            changes.append((live["version"], ("active",), {"status": "retired", "retired_at": now, "reason": reason}))
        values: dict[str, Any] = {"status": "active", "activated_at": now, "reason": None}
        if row["promoted_at"] is None:
            values["promoted_at"] = now
        changes.append((version, (row["status"],), values))
        self.catalog.update_versions(changes, at_most_one="active")
        return live["version"] if live else None
