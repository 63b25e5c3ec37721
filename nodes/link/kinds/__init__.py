"""The built-in link kinds, one module each (looked up through :mod:`hilbed.nodes.link.registry`)."""
