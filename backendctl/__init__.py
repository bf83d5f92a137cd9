"""A small terminal client for installs: ``python -m backendctl watch|install``."""
