"""Versioned message records: the envelope, payload versions and upcasters."""
