"""Agent side: what agent workers use. ``publisher`` (append events, with redaction and
limits), ``leases`` (fenced run leases and the reaper), ``worker`` (the worker runtime:
commands, leases, cancel, resume, drain), ``demo`` (the demo agent), ``redaction``."""
