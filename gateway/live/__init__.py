"""Live delivery: from Redis to viewers. ``hub`` (one Pub/Sub connection per process, fan-out
to bounded per-viewer queues), ``session_stream`` (one viewer of one session: catch-up then
live), ``mux`` (one browser's stream of many sessions), ``activity_stream`` (the activity
feed), ``deps`` (what every stream shares)."""
