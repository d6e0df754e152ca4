"""Fault suite fixtures: see ``labfixtures.py`` (a module, so that a nested pytest run
can load them as a plugin too)."""

from labfixtures import fault_lab_available, lab, pytest_configure

__all__ = ["fault_lab_available", "lab", "pytest_configure"]
