"""Core: the pure parts every other package builds on. No Redis, no HTTP, no I/O.

``offsets`` (positions in a log), ``events`` (the vocabulary and its validation),
``cursors`` (where a stream starts), ``fold`` (a session's state from its events),
``frames`` (every Pub/Sub frame and the SSE framing), ``errors`` (the one error type),
``aio`` (task helpers).
"""
