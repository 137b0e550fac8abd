"""Stylized player portraits with Gemini, orchestrated by Dagster, audited in SQL."""
