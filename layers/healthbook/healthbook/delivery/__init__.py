"""The delivery stage: stored visit → reconcile → deliver (the entry built in memory) → VNeID, within the 24-hour
deadline (docs/delivery.md)."""
