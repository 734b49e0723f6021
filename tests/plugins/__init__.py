"""Modules a test names in ``node.plugins``: extensions registered the way a site would register its own."""
