"""The delivery stage: stored visit → reconcile → project → VNeID, within the 24-hour deadline (docs/delivery.md)."""
