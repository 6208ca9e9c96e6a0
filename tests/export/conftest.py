"""The export tests' session fixture; the builders live in export_helpers.py."""

from export_helpers import exports  # noqa: F401
