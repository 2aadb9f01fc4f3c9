"""The built-in aggregators, registered through the ``trellis_mv`` entry points like any plugin."""
