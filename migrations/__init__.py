"""Versioned SQL migrations of the alerts database, applied in file-name order.

Each file ``NNNN_name.sql`` is applied once, inside a transaction, and recorded in
``schema_migrations``; see :mod:`sinks.migrate`.
"""
