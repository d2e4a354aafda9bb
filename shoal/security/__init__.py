"""Cluster identity: the CA, join tokens, TLS credentials, authorization, the data key.

See ``docs/security.md`` for the model as users see it.
"""
