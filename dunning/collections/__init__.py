"""Collections: the end of a journey without recovery, and the collection partner's side of it.

- `placement_request` (pure, called by the journey workflow at `hand_off`) and the placement it stores;
- the export batch format (`format`), its JSON Schema (`schema`), the daily schedule (`schedule`);
- `record_recall` for placed customers who pay after all; `reconciliation` for the partner's report.

docs/collections-format.md describes the files the partner receives.
"""

from dunning.collections.config import CONTACT_FIELDS, CollectionsConfig, CollectionsConfigError
from dunning.collections.placement import PlacementRequest, PlacementResult, placement_id_for, placement_request
from dunning.collections.recall import record_recall

__all__ = [
    "CONTACT_FIELDS",
    "CollectionsConfig",
    "CollectionsConfigError",
    "PlacementRequest",
    "PlacementResult",
    "placement_id_for",
    "placement_request",
    "record_recall",
]
