"""Example workflows. Every module in this package is loaded by default (ORCHESTRATOR_WORKFLOWS=workflows)."""
