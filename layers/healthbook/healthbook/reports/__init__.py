"""Reports from aggregates kept as events happen (docs/reports.md). Pure: no AWS."""
