"""The embedded proxy model."""
