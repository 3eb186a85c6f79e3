"""Code shared by the scheduler, the host agents and the CLI: the wire protocol and its helpers."""
