"""bulkdrop: files dropped into a spool become Open Connectors bulk jobs."""

__version__ = "0.1.0"
