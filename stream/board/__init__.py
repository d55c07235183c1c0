"""The live leaderboard: the page people watch, the push feeds and the JSON views, on the worker's web server.

Everything here reads Redis only (through ``redis_schema``), never the worker's memory, so any worker answers
the same and a separate ``popscore board`` process could serve it unchanged (docs/architecture.md, "Views").
"""
