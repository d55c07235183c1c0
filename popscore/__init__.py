"""popscore: a streaming real-time popularity scorer."""
