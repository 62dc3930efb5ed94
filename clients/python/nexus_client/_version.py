"""The nexus_client version (that of the nexusd distribution it ships in)."""

__version__ = "0.1.0"
