"""Custody's storage: the verifiable ledger, the content-addressed blob store and the database.

Nothing here imports from ``governance``: storage is usable (and verifiable) on its own.
"""
