"""Service discovery: where the healthy instances of every service can be reached.

The managers derive each service's endpoints from its running, healthy tasks and push
them to every agent on its session (``shoal.discovery.catalog`` holds the model and the
agent's copy); the agent answers DNS and writes endpoint files from that copy, so
discovery keeps working while the managers are away. See docs/discovery.md.
"""
